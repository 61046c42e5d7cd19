"""OpenAI's /v1/files and /v1/fine_tuning/jobs endpoints, on the gateway's small FastAPI app.

    POST   /v1/files                                  multipart (file, purpose), streamed to disk
    GET    /v1/files  /v1/files/{id}  /v1/files/{id}/content        DELETE /v1/files/{id}
    POST   /v1/fine_tuning/jobs                       GET /v1/fine_tuning/jobs (after, limit, metadata[k])
    GET    /v1/fine_tuning/jobs/{id}                  POST /v1/fine_tuning/jobs/{id}/cancel
    GET    /v1/fine_tuning/jobs/{id}/events           GET /v1/fine_tuning/jobs/{id}/checkpoints

Installed only when the gateway settings have a `fine_tuning:` block. Same keys (and rate limits) as
the rest of the gateway, and every refusal in OpenAI's error shape, so the official client raises the
matching exception. The work itself is wrapper.finetune's; this module only speaks HTTP.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from wrapper.errors import FineTuneError
from wrapper.finetune import files, jobs, objects
from wrapper.gateway.finetune_service import FineTuning, api_error
from wrapper.gateway.keys import KeyRecord
from wrapper.gateway.oai import ApiError, body_too_large
from wrapper.gateway.settings import GatewaySettings
from wrapper.gateway.uploads import receive_upload

SECURED: dict[str, Any] = {"security": [{"bearer": []}]}
ERROR_CODES = (400, 401, 404, 408, 413, 429)


class FineTuningGateway(Protocol):
    """What these endpoints need from the gateway."""

    settings: GatewaySettings
    finetune: FineTuning | None

    async def authenticate(self, authorization: bytes | None) -> KeyRecord | None: ...

    def check_rate(self, record: KeyRecord | None) -> None: ...


def _upload_body() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "purpose"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "purpose": {"type": "string", "enum": list(files.PURPOSES)},
                        },
                    }
                }
            },
        }
    }


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its local $refs replaced by what they name (the job request has no cycles)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inlined(value, defs) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, defs) for item in schema]
    return schema


def _job_body() -> dict[str, Any]:
    schema = jobs.JobRequest.model_json_schema()
    body = _inlined(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


def _errors() -> dict[int | str, dict[str, Any]]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    return {code: {"description": "OpenAI's error object", "content": content} for code in ERROR_CODES}


def install(app: FastAPI, gateway: FineTuningGateway) -> None:
    """Add the fine-tuning endpoints to the small app (only when gateway.finetune is configured)."""
    service = gateway.finetune
    assert service is not None
    store, settings = service.store, service.settings

    @app.exception_handler(FineTuneError)
    async def _refused(request: Request, exc: FineTuneError) -> JSONResponse:
        err = api_error(exc)
        headers = {"retry-after": err.retry_after} if err.retry_after else None
        return JSONResponse(err.payload(), status_code=err.status, headers=headers)

    async def caller(request: Request) -> KeyRecord | None:
        record = await gateway.authenticate(
            request.headers.get("authorization", "").encode("latin-1") or None
        )
        gateway.check_rate(record)
        return record

    router = APIRouter(prefix="/v1", dependencies=[Depends(caller)], responses=_errors())

    # ---- files ------------------------------------------------------------------------------------
    @router.post(
        "/files",
        summary="Upload a training file (JSONL, chat or preference rows)",
        openapi_extra={**SECURED, **_upload_body()},
    )
    async def upload_file(request: Request) -> dict[str, Any]:
        try:
            upload = await receive_upload(
                request.stream(),
                request.headers.get("content-type", ""),
                store.files_dir,
                settings.files_max_bytes,
                gateway.settings.body_timeout,
            )
        except ClientDisconnect:
            raise ApiError(400, "The upload was cut off before it ended.", code="invalid_request") from None
        try:
            purpose = upload.fields.get("purpose")
            if not purpose:
                raise ApiError(
                    400,
                    "The form has no `purpose`; send purpose=fine-tune.",
                    code="invalid_request",
                    param="purpose",
                )
            assert upload.path is not None
            with upload.path.open("rb") as handle:
                return await asyncio.to_thread(
                    files.save_upload, store, settings, handle, filename=upload.filename, purpose=purpose
                )
        finally:
            upload.discard()

    @router.get("/files", summary="List uploaded files, newest first", openapi_extra=SECURED)
    async def list_files(
        after: str | None = None, limit: int | None = None, purpose: str | None = None
    ) -> dict[str, Any]:
        return store.list_files(after, objects.check_limit(limit), purpose)

    @router.get("/files/{file_id}", summary="One file", openapi_extra=SECURED)
    async def get_file(file_id: str) -> dict[str, Any]:
        return files.file_info(store, file_id)[0]

    @router.get("/files/{file_id}/content", summary="A file's bytes, as uploaded", openapi_extra=SECURED)
    async def file_content(file_id: str) -> StreamingResponse:
        path = files.content_path(store, file_id)
        try:
            handle = path.open("rb")  # open now: a delete meanwhile does not cut the answer short
        except FileNotFoundError:
            raise FineTuneError(
                f"No file with id {file_id!r}.", code="file_not_found", param="file_id", status=404
            ) from None

        async def chunks() -> AsyncIterator[bytes]:
            with handle:
                while chunk := await asyncio.to_thread(handle.read, files.CHUNK):
                    yield chunk

        size = str(os.fstat(handle.fileno()).st_size)
        return StreamingResponse(
            chunks(), media_type="application/octet-stream", headers={"content-length": size}
        )

    @router.delete("/files/{file_id}", summary="Delete a file", openapi_extra=SECURED)
    async def delete_file(file_id: str) -> dict[str, Any]:
        return files.delete_file(store, file_id)

    # ---- jobs -------------------------------------------------------------------------------------
    @router.post(
        "/fine_tuning/jobs", summary="Create a fine-tuning job", openapi_extra={**SECURED, **_job_body()}
    )
    async def create_job(request: Request) -> dict[str, Any]:
        data = await _json_body(request, gateway.settings.max_body_bytes)
        return await asyncio.to_thread(jobs.create_job, store, settings, data)

    @router.get("/fine_tuning/jobs", summary="List fine-tuning jobs, newest first", openapi_extra=SECURED)
    async def list_jobs(
        request: Request, after: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        metadata = {
            key[len("metadata[") : -1]: value
            for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        return store.list_jobs(after, objects.check_limit(limit), metadata or None)

    @router.get("/fine_tuning/jobs/{job_id}", summary="One fine-tuning job", openapi_extra=SECURED)
    async def get_job(job_id: str) -> dict[str, Any]:
        return jobs.get_job(store, job_id)

    @router.post(
        "/fine_tuning/jobs/{job_id}/cancel",
        summary="Cancel a job (stops its training)",
        openapi_extra=SECURED,
    )
    async def cancel_job(job_id: str) -> dict[str, Any]:
        jobs.get_job(store, job_id)
        return await asyncio.to_thread(service.worker.cancel, job_id)

    @router.get(
        "/fine_tuning/jobs/{job_id}/events", summary="A job's events, newest first", openapi_extra=SECURED
    )
    async def list_events(job_id: str, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        jobs.get_job(store, job_id)
        return store.list_events(job_id, after, objects.check_limit(limit))

    @router.get(
        "/fine_tuning/jobs/{job_id}/checkpoints",
        summary="A job's checkpoints, newest first",
        openapi_extra=SECURED,
    )
    async def list_checkpoints(
        job_id: str, after: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        jobs.get_job(store, job_id)
        return store.list_checkpoints(job_id, after, objects.check_limit(limit, default=10))

    app.include_router(router)


async def _json_body(request: Request, limit: int) -> Any:
    size, parts = 0, []
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            parts.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "The request was cut off before it ended.", code="invalid_request") from None
    try:
        return orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON ({exc}).", code="invalid_json") from None
