"""Many adapters of one base model behind one server, as vLLM's OpenAI server does with --enable-lora:
one gateway route per adapter, all pointing at the same upstream URL, the adapter chosen by `model`.

vLLM needs a GPU and cannot run here, so the upstream is a vLLM STAND-IN (`VllmLoraStandIn` below), which
answers the way vLLM 0.x's OpenAI server does for LoRA modules: /v1/models lists the base model and each
`--lora-modules NAME=PATH` adapter, a chat request runs the adapter its `model` names, and an unknown
model is a 404 `{"object": "error", ...}`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
from gateway_support import make_gateway, make_settings, serving

ADAPTERS = ("conch", "sponge")


class VllmLoraStandIn:
    """A stand-in for `vllm serve BASE --enable-lora --lora-modules conch=... sponge=...`."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/models":
            data = [{"id": "base", "object": "model"}] + [
                {"id": name, "object": "model", "parent": "base"} for name in ADAPTERS
            ]
            return await self._json(send, 200, {"object": "list", "data": data})
        request = orjson.loads(body)
        model = request["model"]
        self.asked.append(model)
        if model not in ADAPTERS and model != "base":
            error = {"object": "error", "message": f"The model `{model}` does not exist.", "code": 404}
            return await self._json(send, 404, {**error, "type": "NotFoundError", "param": None})
        text = f"answered by adapter {model}"
        if request.get("stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            for piece in ({"role": "assistant"}, {"content": text}):
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": piece, "finish_reason": None}],
                }
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        answer = {
            "id": "c",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
        await self._json(send, 200, answer)

    async def _json(self, send: Any, status: int, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def test_each_route_reaches_its_adapter_on_one_shared_server(tmp_path: Path):
    vllm = VllmLoraStandIn()
    with serving(vllm) as up:
        routes = [{"name": name, "upstream": up.url, "max_concurrency": 8} for name in (*ADAPTERS, "missing")]
        with serving(make_gateway(make_settings(routes, tmp_path, auth="open"))) as gw:
            from openai import NotFoundError, OpenAI

            client = OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
            for name in ADAPTERS:
                reply = client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "hi"}]
                )
                assert reply.choices[0].message.content == f"answered by adapter {name}"
                assert reply.model == name
                stream = client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "hi"}], stream=True
                )
                text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
                assert text == f"answered by adapter {name}"
            assert vllm.asked == ["conch", "conch", "sponge", "sponge"]
            listed = {m.id for m in client.models.list()}
            assert listed == {*ADAPTERS, "missing"}

            # a route whose adapter the server does not load: vLLM's own message, in OpenAI's shape
            resp = httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": "missing", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert resp.status_code == 400
            error = resp.json()["error"]
            assert error["code"] == "upstream_rejected" and "`missing` does not exist" in error["message"]
            try:
                client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
            except NotFoundError as exc:
                assert json.loads(exc.response.text)["error"]["code"] == "model_not_found"
            else:
                raise AssertionError("an unknown route must be a 404")
