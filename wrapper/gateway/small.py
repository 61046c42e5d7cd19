"""The gateway's small endpoints on FastAPI: models, health, readiness, metrics, docs, rag search.

Errors use OpenAI's error object here too, including FastAPI's own 404/405/422. The gateway is seen
only through `GatewayView` (app.py builds this app; this module never imports app.py). The gateway
adds the sanitised x-request-id to every answer.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from wrapper.gateway.grounding import SearchAnswer, SearchRequest
from wrapper.gateway.keys import KeyRecord
from wrapper.gateway.oai import ApiError
from wrapper.gateway.openapi_doc import install_openapi
from wrapper.pydantic_errors import loc_text


class GatewayView(Protocol):
    """What the small endpoints need from the gateway."""

    started: float

    async def authenticate(self, authorization: bytes | None) -> KeyRecord | None: ...

    def visible_models(self, record: KeyRecord | None) -> list[str]: ...

    async def readiness(self) -> tuple[bool, dict[str, str]]: ...

    def metrics_text(self) -> str: ...

    async def rag_search(
        self, index: str, request: SearchRequest, authorization: bytes | None
    ) -> SearchAnswer: ...


def _error(err: ApiError, request: Request) -> JSONResponse:
    headers: dict[str, str] = {}
    if err.retry_after is not None:
        headers["retry-after"] = err.retry_after
    return JSONResponse(err.payload(), status_code=err.status, headers=headers)


def build_small_app(gateway: GatewayView) -> FastAPI:
    app = FastAPI(
        title="lfwrap gateway", version="1", description="OpenAI-compatible front for LLaMA-Factory."
    )

    install_openapi(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        message = (
            f"No such endpoint: {request.method} {request.url.path}."
            if exc.status_code == 404
            else str(exc.detail)
        )
        return _error(ApiError(exc.status_code, message, code=code), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = loc_text(first.get("loc", ()))
        return _error(
            ApiError(
                400,
                f"Invalid request: {param}: {first.get('msg')}.",
                code="invalid_request",
                param=param or None,
            ),
            request,
        )

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        record = await gateway.authenticate(
            request.headers.get("authorization", "").encode("latin-1") or None
        )
        created = int(gateway.started)
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "lfwrap"}
                for name in gateway.visible_models(record)
            ],
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, upstreams = await gateway.readiness()
        body = {"status": "ready" if ready else "not ready", "upstreams": upstreams}
        return JSONResponse(
            body, status_code=200 if ready else 503, headers=None if ready else {"retry-after": "5"}
        )

    @app.post(
        "/v1/rag/{index}/search",
        summary="The chunks a query retrieves from an index a model route uses (for debugging)",
        openapi_extra={"security": [{"bearer": []}]},
    )
    async def rag_search(index: str, body: SearchRequest, request: Request) -> SearchAnswer:
        authorization = request.headers.get("authorization", "").encode("latin-1") or None
        return await gateway.rag_search(index, body, authorization)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(gateway.metrics_text(), media_type="text/plain; version=0.0.4")

    if getattr(gateway, "finetune", None) is not None:
        from wrapper.gateway.finetune_api import install

        install(app, gateway)  # type: ignore[arg-type]
    return app
