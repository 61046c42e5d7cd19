"""The serving pool: an API server per fine-tuned model, started on demand, stopped when idle.

    pool = ServingPool(store, settings)
    await pool.start()                      # adopt or stop servers a previous pool left; start the reaper
    url = await pool.ensure("ft:tiny-demo:conch:ftjob-...")   # starts one if needed, waits until it answers
    async with pool.use(model) as url: ...  # the same, counted in flight (never stopped meanwhile)
    await pool.shutdown()                   # stops every server it started or adopted, or is starting

Servers are `lfwrap serve`'s (wrapper.launch.serve.start_api_server on the job's run), one per model,
on a free port of fine_tuning.serve.ports, behind a key of the pool's own (`pool.api_key`). A server
idle for idle_stop_s is stopped; at most max_resident run, the least recently used idle one making
room. Each server's pid is recorded in the store with its identity (start time, boot id), as the
launcher records supervisors: a restarted pool adopts a recorded server that still is that process
and answers with its key, and stops one that does not answer; a stale record is only dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from wrapper.errors import FineTuneError, LfwrapError
from wrapper.finetune.settings import FineTuningSettings
from wrapper.finetune.store import Store
from wrapper.launch import runs
from wrapper.launch.process import process_identity, same_process, stop_group
from wrapper.launch.serve import READY_TIMEOUT, ServerHandle

STOP_GRACE_SECONDS = 10.0


@dataclass
class Resident:
    model: str
    url: str
    port: int
    pid: int | None
    handle: ServerHandle | None  # None for a server adopted from a previous pool
    identity: dict[str, Any] | None
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    def alive(self) -> bool:
        if self.handle is not None:
            return self.handle.running()
        return same_process(self.pid, self.identity)


def _stop_server(pid: int, identity: dict[str, Any] | None) -> None:
    """Stop the group a recorded server leads, only while the pid still is that server."""
    stop_group(pid, grace=STOP_GRACE_SECONDS, identity=identity or {})


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServingPool:
    def __init__(self, store: Store, settings: FineTuningSettings, *, ready_timeout: float = READY_TIMEOUT):
        self.store = store
        self.settings = settings
        self.ready_timeout = ready_timeout
        self.api_key = "sk-pool-" + secrets.token_urlsafe(24)
        self.servers: dict[str, Resident] = {}
        self._keys: dict[str, str] = {}  # adopted servers keep the key they were started with
        self._locks: dict[str, asyncio.Lock] = {}
        self._room = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    # lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._adopt_or_stop_orphans)
        self._reaper = asyncio.create_task(self._reap_forever())

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for model in list(self.servers):
            await self._stop(model)
        # a server still starting (its request waiting for it) is recorded but not resident yet
        for model, _, pid, identity, _ in await asyncio.to_thread(self.store.servers):
            await asyncio.to_thread(_stop_server, pid, identity)
            self.store.forget_server(model)

    def _adopt_or_stop_orphans(self) -> None:
        import httpx

        for model, port, pid, identity, url in self.store.servers():
            if not same_process(pid, identity):
                self.store.forget_server(model)
                continue
            key = identity.get("api_key")
            try:
                answer = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
                names = [item.get("id") for item in answer.json().get("data", [])]
            except (httpx.HTTPError, ValueError, AttributeError):
                names = []
            if model in names and key:
                self.servers[model] = Resident(model, url, port, pid, None, identity)
                self._keys[model] = key
            else:
                _stop_server(pid, identity)
                self.store.forget_server(model)

    def key_for(self, model: str) -> str:
        """The API key the upstream of `model` expects (the pool's, or an adopted server's own)."""
        return self._keys.get(model, self.api_key)

    # serving
    def models(self) -> list[str]:
        """Every fine-tuned model the pool can serve (for /v1/models), oldest first."""
        return [job["fine_tuned_model"] for job in self.store.fine_tuned_models()]

    async def ensure(self, model: str) -> str:
        """The base URL (no /v1) of a server answering for `model`, started if needed."""
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            resident = self.servers.get(model)
            if resident is not None and resident.alive():
                resident.last_used = time.monotonic()
                return resident.url
            if resident is not None:
                await self._stop(model)
            job = self.store.job_for_model(model)
            if job is None:
                raise FineTuneError(
                    f"The model {model!r} does not exist.", code="model_not_found", param="model", status=404
                )
            async with self._room:
                await self._make_room()
                port = self._free_port()
                try:
                    resident = await asyncio.to_thread(self._start, model, job, port)
                except LfwrapError as exc:  # its run folder removed, or the server would not start
                    raise FineTuneError(
                        f"The model {model!r} cannot be served: {exc}",
                        code="model_unavailable",
                        param="model",
                        status=503,
                    ) from None
                self.servers[model] = resident
            return resident.url

    @contextlib.asynccontextmanager
    async def use(self, model: str) -> AsyncIterator[str]:
        url = await self.ensure(model)
        resident = self.servers[model]
        resident.in_flight += 1
        try:
            yield url
        finally:
            resident.in_flight -= 1
            resident.last_used = time.monotonic()

    def _start(self, model: str, job: dict[str, Any], port: int) -> Resident:
        from wrapper.launch.serve import run_infer_config, start_api_server

        run_dir = runs.run_path(job["id"])
        config = run_infer_config(run_dir)
        folder = self.store.path.parent / "serve"

        def record(handle: ServerHandle) -> None:
            if handle.pid is not None:
                identity = {**(process_identity(handle.pid) or {}), "api_key": self.api_key}
                self.store.record_server(model, port, handle.pid, identity, handle.url)

        try:
            handle = start_api_server(
                config,
                config_path=folder / f"{job['id']}.yaml",
                port=port,
                model_name=model,
                api_key=self.api_key,
                backend=self.settings.backend,
                timeout=self.ready_timeout,
                on_started=record,
            )
        except BaseException:
            self.store.forget_server(model)
            raise
        identity = process_identity(handle.pid) if handle.pid else None
        return Resident(model, handle.url, port, handle.pid, handle, identity)

    def _free_port(self) -> int:
        taken = {resident.port for resident in self.servers.values()}
        for port in self.settings.serve.port_range:
            if port not in taken and _port_free(port):
                return port
        raise FineTuneError(
            f"No free port in fine_tuning.serve.ports ({self.settings.serve.ports}); widen the range.",
            code="no_capacity",
            param=None,
            status=503,
        )

    async def _make_room(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while len(self.servers) >= self.settings.serve.max_resident:
            idle = [r for r in self.servers.values() if r.in_flight == 0]
            if idle:
                await self._stop(min(idle, key=lambda r: r.last_used).model)
                continue
            if time.monotonic() > deadline:
                raise FineTuneError(
                    f"All {len(self.servers)} model servers are busy (fine_tuning.serve.max_resident); "
                    "try again shortly.",
                    code="no_capacity",
                    param=None,
                    status=503,
                )
            await asyncio.sleep(0.2)

    async def _stop(self, model: str) -> None:
        resident = self.servers.get(model)
        if resident is None:
            return
        if resident.handle is not None:
            await asyncio.to_thread(resident.handle.stop)
        elif resident.pid is not None:
            await asyncio.to_thread(_stop_server, resident.pid, resident.identity)
        self.servers.pop(model, None)  # only once stopped: `servers` never lists a server that is gone
        self._keys.pop(model, None)
        self.store.forget_server(model)

    async def reap(self) -> None:
        """Stop servers idle for idle_stop_s, and forget ones that died."""
        limit = self.settings.serve.idle_stop_s
        for model, resident in list(self.servers.items()):
            lock = self._locks.setdefault(model, asyncio.Lock())
            if lock.locked():
                continue  # being started or checked by ensure()
            idle = resident.in_flight == 0 and time.monotonic() - resident.last_used > limit
            if idle or not resident.alive():
                async with lock:
                    await self._stop(model)

    async def _reap_forever(self) -> None:
        interval = min(self.settings.serve.idle_stop_s / 2, 5.0)
        while True:
            await asyncio.sleep(interval)
            await self.reap()
