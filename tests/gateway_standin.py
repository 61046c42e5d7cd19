"""A fast stand-in for LLaMA-Factory's API server: plain ASGI, fixed replies, records what it gets.

Used by the gateway's tests and benchmark, never by the gateway itself. It answers like
`llamafactory-cli api`: `model` in the answer is the server's own name (not the requested one),
errors are FastAPI's {"detail": ...}, stream events end with CRLF pairs as sse-starlette writes
them, the first chunk carries only the role and no usage is sent when streaming.

A request may steer it with a body field LLaMA-Factory would drop: "standin": {"mode": ...} with
mode "fail_mid_stream" (close the connection after two chunks), "detail_400", "error_500", "garbage",
"slow_plain" (answer after 2 s), "hold_plain" (answer after 10 s unless the caller leaves first, which
counts in `disconnects`), "big_plain" (an answer with a reply of "bytes" bytes), "truncated_json",
"no_done" (a stream without [DONE]), "stall_stream" (two chunks, then silence for 10 s), "echo" (a
stream whose reply is the last message's content).

    $ python tests/gateway_standin.py --port 8001 --chunks 16 --interval-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

REPLY = "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"


@dataclass
class Seen:
    """What the stand-in received: one entry per request."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    name: str = "gpt-3.5-turbo"
    reply: str = REPLY
    chunks: int = 8
    interval_s: float = 0.0
    api_key: str | None = None
    record: bool = True
    seen: list[Seen] = field(default_factory=list)
    disconnects: int = 0
    streams_finished: int = 0

    def __post_init__(self) -> None:
        self._models = orjson.dumps(
            {
                "object": "list",
                "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "owner"}],
            }
        )
        self._plain = orjson.dumps(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": 0,
                "model": self.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
            }
        )
        step = max(1, -(-len(self.reply) // self.chunks))
        self._pieces = [self.reply[i : i + step] for i in range(0, len(self.reply), step)]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(body) + b"\r\n\r\n"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if self.record:
            self.seen.append(Seen(path, headers, body))
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            await _send(send, 401, b'{"detail":"Invalid API key"}')
            return
        if path == "/v1/models":
            await _send(send, 200, self._models)
            return
        if path == "/v1/score/evaluation":
            await _send(send, 200, orjson.dumps({"id": "score", "model": self.name, "scores": [0.5]}))
            return
        if path != "/v1/chat/completions":
            await _send(send, 404, b'{"detail":"Not Found"}')
            return
        request = orjson.loads(body)
        mode = (request.get("standin") or {}).get("mode")
        if mode == "echo":  # the reply is the last message's content: streams can be told apart
            reply = str(request["messages"][-1]["content"])
            step = max(1, -(-len(reply) // self.chunks))
            await self._stream(receive, send, None, [reply[i : i + step] for i in range(0, len(reply), step)])
            return
        if mode == "detail_400":
            await _send(send, 400, b'{"detail":"Invalid role"}')
        elif mode == "error_500":
            await _send(send, 500, b"Internal Server Error", b"text/plain")
        elif mode == "slow_plain":
            await asyncio.sleep(2.0)
            await _send(send, 200, self._plain)
        elif mode == "garbage":
            await _send(send, 200, b"<html>not json</html>", b"text/html")
        elif mode == "truncated_json":
            await _send(send, 200, self._plain[: len(self._plain) // 2])
        elif mode == "hold_plain":
            if await self._left_within(receive, 10.0):
                self.disconnects += 1
                return
            await _send(send, 200, self._plain)
        elif mode == "big_plain":
            size = int(request["standin"].get("bytes", 1 << 20))
            answer = orjson.loads(self._plain)
            answer["choices"][0]["message"]["content"] = "x" * size
            await _send(send, 200, orjson.dumps(answer))
        elif request.get("stream"):
            await self._stream(receive, send, mode)
        else:
            await _send(send, 200, self._plain)

    async def _left_within(self, receive: Any, seconds: float) -> bool:
        """True when the caller disconnects within `seconds`."""

        async def left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await asyncio.wait_for(left(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def _stream(
        self, receive: Any, send: Any, mode: str | None, pieces: list[str] | None = None
    ) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                if (await receive())["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )
            events = [self._chunk({"role": "assistant", "content": ""})]
            events += [self._chunk({"content": piece}) for piece in (pieces or self._pieces)]
            events += [self._chunk({}, "stop"), b"data: [DONE]\r\n\r\n"]
            for index, event in enumerate(events):
                if mode == "fail_mid_stream" and index == 3:
                    raise ConnectionAbortedError("stand-in: failing mid-stream on purpose")
                if mode == "no_done" and event.startswith(b"data: [DONE]"):
                    break
                if mode == "stall_stream" and index == 2:
                    try:
                        await asyncio.wait_for(gone.wait(), 10.0)
                    except asyncio.TimeoutError:
                        pass
                if self.interval_s and index:
                    try:
                        await asyncio.wait_for(gone.wait(), self.interval_s)
                    except asyncio.TimeoutError:
                        pass
                if gone.is_set():
                    self.disconnects += 1
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.streams_finished += 1
        finally:
            watcher.cancel()


async def _send(send: Any, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fast OpenAI-style stand-in upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    app = StandIn(chunks=args.chunks, interval_s=args.interval_ms / 1000.0, record=False)
    started = time.time()
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    print(f"stand-in ran {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
