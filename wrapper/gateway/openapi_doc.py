"""The gateway's OpenAPI document: FastAPI's for the small endpoints, plus the two endpoints app.py
serves before FastAPI sees a request (chat completions, scores), with OpenAI's error object."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(description="system, user, assistant, tool or function.")
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """POST /v1/chat/completions (served by the gateway's hot path; described here for the docs)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = 1
    max_tokens: int | None = None
    temperature: float | None = None


class ScoreRequest(BaseModel):
    """POST /v1/score/evaluation: LLaMA-Factory's reward-model scores."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128)
    messages: list[str] = Field(min_length=1)


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _proxied_paths(components: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI entries for the two endpoints app.py serves before FastAPI sees a request."""
    schemas = components.setdefault("schemas", {})
    schemas["OpenAIError"] = _ERROR_SCHEMA
    paths = {}
    for path, model, summary in (
        ("/v1/chat/completions", ChatRequest, "Chat completion, plain or SSE (stream: true)"),
        ("/v1/score/evaluation", ScoreRequest, "Reward-model scores"),
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
        paths[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/").replace("/", "_"),
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "The upstream's answer, model renamed (JSON or text/event-stream)."
                    },
                    **{
                        str(code): {"description": text, "content": error}
                        for code, text in (
                            (400, "Invalid request"),
                            (401, "Missing or invalid API key"),
                            (403, "Key may not use this model"),
                            (404, "Unknown model"),
                            (405, "Wrong method"),
                            (408, "Body too slow"),
                            (413, "Body too large"),
                            (414, "URL too long"),
                            (429, "Rate limit or queue full"),
                            (502, "Broken upstream answer"),
                            (503, "Upstream down or busy"),
                            (504, "Upstream timed out"),
                        )
                    },
                },
            }
        }
    return paths


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["paths"] = {**_proxied_paths(components), **schema["paths"]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
