"""POST /v1/files bodies: multipart/form-data parsed as it arrives (python-multipart, the parser
starlette uses), the `file` part written straight to a temporary file with a size limit.

    upload = await receive_upload(request.stream(), content_type, folder, limit, chunk_timeout)
    try: ... upload.path, upload.filename, upload.fields["purpose"] ...
    finally: upload.discard()

Nothing is held in memory beyond one chunk and the small text fields. A body over the limit is
refused (413) as soon as the limit is passed; a body that stops arriving for chunk_timeout seconds
is refused (408).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from wrapper.gateway.oai import ApiError

MAX_FIELD_BYTES = 1024  # text fields (purpose, ...) are short
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8192


@dataclass
class Upload:
    path: Path | None = None
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


class _Receiver:
    """The parser's callbacks: they collect part headers, text fields and the file's bytes."""

    def __init__(self, folder: Path, limit: int):
        self.folder = folder
        self.limit = limit
        self.upload = Upload()
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._is_file = False
        self._field = bytearray()
        self._out: IO[bytes] | None = None
        self.failure: ApiError | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def fail(self, error: ApiError) -> None:
        if self.failure is None:
            self.failure = error

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self.fail(_bad(f"The form has more than {MAX_PARTS} parts; send `file` and `purpose`."))
        self._headers, self._header_name, self._header_value = {}, b"", b""
        self._name, self._is_file = "", False
        self._field = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_PART_HEADER_BYTES:
            self.fail(_bad("A form part's header is too long."))
            self._header_value = b""

    def header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name, self._header_value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._is_file = self._name == "file"
        if not self._is_file or self.failure is not None:
            return
        if self.upload.path is not None:
            self.fail(_bad("The form has more than one `file` part; upload one file per request.", "file"))
            return
        self.upload.filename = (filename or b"").decode("utf-8", "replace")
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.folder)
        self.upload.path = Path(name)
        self._out = os.fdopen(handle, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.failure is not None:
            return
        if self._is_file and self._out is not None:
            self.upload.size += end - start
            if self.upload.size > self.limit:
                self.fail(
                    ApiError(
                        413,
                        f"The file is larger than the limit of {self.limit} bytes "
                        "(fine_tuning.files_max_bytes); upload a smaller file or raise the limit.",
                        code="file_too_large",
                        param="file",
                    )
                )
                return
            self._out.write(data[start:end])
        elif not self._is_file:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                self.fail(_bad(f"The form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes."))

    def part_end(self) -> None:
        if self._is_file and self._out is not None:
            self._out.close()
            self._out = None
        elif self._name and self.failure is None:
            self.upload.fields[self._name] = self._field.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str,
    folder: Path,
    limit: int,
    chunk_timeout: float,
    drain_bytes: int = 16 << 20,
) -> Upload:
    """Parse a multipart body into an Upload (the caller discards it). ApiError 400/408/413.

    After a refusal, up to drain_bytes more of the body are read and dropped, so that an ordinary
    client, still sending, reads the error rather than a reset connection."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _bad(
            "Upload the file as multipart/form-data with the fields `file` and `purpose` "
            "(the openai client's files.create does).",
            "file",
        )
    receiver = _Receiver(folder, limit)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    drained = 0
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), chunk_timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"The upload stopped arriving for {chunk_timeout:g} s (body_timeout).",
                    code="request_timeout",
                ) from None
            if receiver.failure is not None:
                drained += len(chunk)
                if drained > drain_bytes:
                    break
                continue
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise _bad(f"The multipart body is malformed: {exc}.") from None
        if receiver.failure is not None:
            raise receiver.failure
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise _bad(f"The multipart body is malformed: {exc}.") from None
        if receiver._out is not None:
            raise _bad("The multipart body ended inside the `file` part; send the whole form.", "file")
        if receiver.upload.path is None:
            raise _bad("The form has no `file` part; send the training data as `file`.", "file")
        return receiver.upload
    except BaseException:
        receiver.close()
        receiver.upload.discard()
        raise
