"""Minimal proxies for comparison (bench only): what a first FastAPI gateway usually looks like.
(No `from __future__ import annotations` here: FastAPI must see the real Request class.)

python alt_proxies.py fastapi_httpx UPSTREAM PORT
python alt_proxies.py starlette_aiohttp UPSTREAM PORT
python alt_proxies.py granian_httptools UPSTREAM PORT  # the gateway's stack with nothing else: its floor
"""

import sys

import uvicorn


def fastapi_httpx(upstream: str):  # type: ignore[no-untyped-def]
    import httpx
    from fastapi import FastAPI, Request, Response

    app = FastAPI()
    client = httpx.AsyncClient(base_url=upstream, timeout=60)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        upstream_resp = await client.post(
            "/v1/chat/completions", content=await request.body(), headers={"content-type": "application/json"}
        )
        return Response(
            upstream_resp.content, status_code=upstream_resp.status_code, media_type="application/json"
        )

    @app.get("/v1/models")
    async def models() -> Response:
        return Response((await client.get("/v1/models")).content, media_type="application/json")

    return app


def starlette_aiohttp(upstream: str):  # type: ignore[no-untyped-def]
    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}

    async def chat(request: Request) -> Response:
        if "s" not in state:
            state["s"] = aiohttp.ClientSession()
        async with state["s"].post(
            upstream + "/v1/chat/completions",
            data=await request.body(),
            headers={"content-type": "application/json"},
        ) as resp:
            return Response(await resp.read(), status_code=resp.status, media_type="application/json")

    async def models(request: Request) -> Response:
        return Response(b'{"object":"list","data":[]}', media_type="application/json")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )


def granian_httptools(upstream: str, port: int) -> None:
    """A raw-ASGI proxy on embedded granian and uvloop with the gateway's own upstream client
    (wrapper/gateway/httpclient.py), as the gateway serves: no limits, keys, checks, metrics or logs,
    so the gap to the gateway is what those cost."""
    import uvloop
    from granian.constants import HTTPModes, Interfaces
    from granian.server.embed import Server

    from wrapper.gateway.httpclient import Pool

    pool = Pool(upstream, connect_timeout=5)
    headers_up = {"Content-Type": "application/json"}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        resp = await pool.request(scope["method"], scope["path"], body, headers_up, 60)
        out = await resp.read()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    server = Server(
        app,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        log_enabled=False,
    )
    uvloop.run(server.serve())


def main() -> None:
    kind, upstream, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "granian_httptools":
        granian_httptools(upstream, port)
        return
    app = fastapi_httpx(upstream) if kind == "fastapi_httpx" else starlette_aiohttp(upstream)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
