"""The lfwrap gateway with aiohttp's client in place of wrapper/gateway/httpclient.py (bench only).

Same app, server, settings and stand-in; only the upstream pool differs, so the ratio of the two
gateways' requests/s is the client's share.

    python gateway_aiohttp.py CONFIG.yaml
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wrapper.gateway import httpclient, server, upstream  # noqa: E402
from wrapper.gateway.settings import load_settings  # noqa: E402


class AioResponse:
    def __init__(self, resp: aiohttp.ClientResponse):
        self._resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def read(self, limit: int = 1 << 62) -> bytes:
        chunks, size = [], 0
        try:
            async for chunk in self._resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise httpclient.UpstreamTooLarge(f"the answer is over {limit} bytes")
                chunks.append(chunk)
        except aiohttp.ClientError as exc:
            raise httpclient.UpstreamProtocolError(str(exc)) from None
        except asyncio.TimeoutError:
            raise httpclient.UpstreamTimeout("read timeout") from None
        self._resp.release()
        return b"".join(chunks)

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise httpclient.UpstreamProtocolError(str(exc)) from None
        except asyncio.TimeoutError:
            raise httpclient.UpstreamTimeout("read timeout") from None

    def close(self) -> None:
        self._resp.close()


class AioPool:
    def __init__(self, base_url: str, connect_timeout: float):
        self.base = base_url
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, path: str, body: bytes, extra: str, read_timeout: float) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = dict(line.split(": ", 1) for line in extra.split("\r\n") if line)
        timeout = aiohttp.ClientTimeout(sock_connect=self.connect_timeout, sock_read=read_timeout)
        try:
            resp = await self._session.request(
                method, self.base + path, data=body, headers=headers, timeout=timeout
            )
        except aiohttp.ClientConnectorError as exc:
            raise httpclient.UpstreamConnectError(str(exc)) from None
        except asyncio.TimeoutError:
            raise httpclient.UpstreamTimeout("timeout") from None
        except aiohttp.ClientError as exc:
            raise httpclient.UpstreamProtocolError(str(exc)) from None
        return AioResponse(resp)

    def close(self) -> None:
        pass  # the process ends with the bench


def main() -> None:
    upstream.Pool = AioPool  # type: ignore[assignment,misc]
    server.run(load_settings(Path(sys.argv[1])), log_level="warning")


if __name__ == "__main__":
    main()
