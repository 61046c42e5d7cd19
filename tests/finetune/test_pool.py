"""The serving pool's bookkeeping with real processes: orphans adopted, stopped or forgotten at start,
the least recently used idle server making room, shutdown stopping what it holds. The servers here are
small HTTP processes answering GET /v1/models like LLaMA-Factory's (a stand-in: starting the real API
server costs ~15 s; the end-to-end test starts real ones through the pool)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from finetune_helpers import tiny_settings

from wrapper.finetune.pool import ServingPool
from wrapper.finetune.store import Store
from wrapper.launch.process import process_identity

MODELS_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
model, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == f"Bearer {key}"
        body = json.dumps({"object": "list", "data": [{"id": model}]} if ok else {"detail": "no"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(model: str, key: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", MODELS_SERVER, model, key, str(port)], start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/v1/models", timeout=1)
            return process, url
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def _record(store: Store, model: str, process: subprocess.Popen[bytes], url: str, key: str) -> None:
    identity = {**(process_identity(process.pid) or {}), "api_key": key}
    store.record_server(model, int(url.rsplit(":", 1)[1]), process.pid, identity, url)


def test_orphans_are_adopted_stopped_or_forgotten(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, tmp_path)
    store = Store(settings.database_path)
    live, live_url = _server("ft:tiny-demo:a:ftjob-1", "sk-old")
    _record(store, "ft:tiny-demo:a:ftjob-1", live, live_url, "sk-old")
    mute = subprocess.Popen(["sleep", "60"], start_new_session=True)  # alive, answers nothing
    _record(store, "ft:tiny-demo:b:ftjob-2", mute, "http://127.0.0.1:9", "sk-old")
    gone = subprocess.Popen(["sleep", "0"], start_new_session=True)
    _record(store, "ft:tiny-demo:c:ftjob-3", gone, "http://127.0.0.1:9", "sk-old")
    gone.wait()

    async def scenario() -> None:
        pool = ServingPool(Store(settings.database_path), settings)
        await pool.start()
        assert list(pool.servers) == ["ft:tiny-demo:a:ftjob-1"]
        assert [row[0] for row in pool.store.servers()] == ["ft:tiny-demo:a:ftjob-1"]
        assert mute.wait(timeout=15) is not None  # stopped: it did not answer as the model
        assert await pool.ensure("ft:tiny-demo:a:ftjob-1") == live_url  # adopted, nothing started
        assert pool.key_for("ft:tiny-demo:a:ftjob-1") == "sk-old" and pool.key_for("other") == pool.api_key
        await pool.shutdown()
        assert live.wait(timeout=15) is not None and pool.store.servers() == []

    asyncio.run(scenario())


def test_least_recently_used_idle_server_makes_room(tmp_path: Path) -> None:
    settings = tiny_settings(
        tmp_path, tmp_path, serve={"idle_stop_s": 900, "max_resident": 2, "ports": "18100-18199"}
    )
    store = Store(settings.database_path)
    processes = {}
    for name in ("old", "busy"):
        model = f"ft:tiny-demo:{name}:ftjob-{name}"
        processes[name], url = _server(model, "k")
        _record(store, model, processes[name], url, "k")

    async def scenario() -> None:
        pool = ServingPool(store, settings)
        await pool.start()
        assert len(pool.servers) == 2
        pool.servers["ft:tiny-demo:busy:ftjob-busy"].last_used -= 1000  # older, but in flight
        pool.servers["ft:tiny-demo:busy:ftjob-busy"].in_flight = 1
        await pool._make_room()
        assert list(pool.servers) == ["ft:tiny-demo:busy:ftjob-busy"]
        assert processes["old"].wait(timeout=15) is not None and processes["busy"].poll() is None
        pool.servers["ft:tiny-demo:busy:ftjob-busy"].in_flight = 0
        await pool.reap()  # idle for 1000 s > idle_stop_s
        assert pool.servers == {} and processes["busy"].wait(timeout=15) is not None
        await pool.shutdown()

    asyncio.run(scenario())


def test_shutdown_also_stops_a_server_still_starting(tmp_path: Path) -> None:
    """A server is recorded as soon as its process exists, and resident only once it answers: SIGTERM
    on the gateway meanwhile must not leave it running."""
    settings = tiny_settings(tmp_path, tmp_path)
    store = Store(settings.database_path)

    async def scenario() -> None:
        pool = ServingPool(store, settings)
        await pool.start()
        starting = subprocess.Popen(["sleep", "60"], start_new_session=True)  # not answering yet
        _record(store, "ft:tiny-demo:s:ftjob-s", starting, "http://127.0.0.1:9", pool.api_key)
        assert pool.servers == {}
        await pool.shutdown()
        assert starting.wait(timeout=15) is not None and store.servers() == []

    asyncio.run(scenario())
