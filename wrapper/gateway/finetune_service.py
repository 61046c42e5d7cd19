"""Fine-tuning inside the gateway process: the store, the job worker and the serving pool of ft: models.

    service = FineTuning(settings.fine_tuning, metrics)   # opens the SQLite store (fails at start, not later)
    await service.start()        # lifespan startup: pool adopts/stops orphans, the worker starts
    async with service.upstream(model, record) as upstream: ...   # an ft: model's pooled server
    await service.stop()         # lifespan shutdown: the worker stops, every pooled server is stopped

The worker runs max_parallel_jobs trainings at a time, each a normal run folder; stopping the gateway
leaves trainings running (a restarted gateway follows or resumes them, see wrapper.finetune.worker).
Servers of the pool are stopped with the gateway (SIGTERM included: the lifespan shutdown runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import SecretStr

from wrapper.errors import FineTuneError
from wrapper.finetune.pool import Resident, ServingPool
from wrapper.finetune.settings import FineTuningSettings
from wrapper.finetune.store import Store
from wrapper.finetune.worker import Worker
from wrapper.gateway.keys import KeyRecord
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import ApiError, model_not_allowed
from wrapper.gateway.settings import ModelRoute
from wrapper.gateway.upstream import Upstream

log = logging.getLogger("lfwrap.gateway")
FT_PREFIX = "ft:"


def api_error(exc: FineTuneError) -> ApiError:
    """A fine-tuning refusal as the gateway's OpenAI error object."""
    retry = "5" if exc.status == 503 else None
    return ApiError(exc.status, str(exc), code=exc.code, param=exc.param, retry_after=retry)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "the fine-tuning worker stopped: %r; queued jobs wait until the gateway restarts",
            task.exception(),
        )


class FineTuning:
    def __init__(self, settings: FineTuningSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.store = Store(settings.database_path)
        self.worker = Worker(self.store, settings)
        self.pool = ServingPool(self.store, settings)
        self._worker_task: asyncio.Task[None] | None = None
        # one Upstream per pooled server process: a restarted server (new port or pid) gets a new one
        self._upstreams: dict[str, tuple[Resident, Upstream]] = {}

    # lifecycle
    async def start(self) -> None:
        await self.pool.start()
        self._worker_task = asyncio.create_task(self.worker.run())
        self._worker_task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        self.worker.stop()
        if self._worker_task is not None:
            with contextlib.suppress(Exception):
                await self._worker_task
        await self.pool.shutdown()
        for _, upstream in self._upstreams.values():
            await upstream.aclose()
        self._upstreams.clear()
        self.store.close()

    # serving
    def models(self, record: KeyRecord | None) -> list[str]:
        """The succeeded jobs' fine-tuned models this key may call, oldest first."""
        return [name for name in self.pool.models() if record is None or record.allows(name)]

    def serves(self, model: str) -> bool:
        """Whether `model` is this gateway's to serve from the pool (any ft: name not routed otherwise)."""
        return model.startswith(FT_PREFIX)

    @contextlib.asynccontextmanager
    async def upstream(self, model: str, record: KeyRecord | None) -> AsyncIterator[Upstream]:
        """The Upstream of `model`'s pooled server, started if needed (the request waits until it
        answers, up to the pool's ready timeout); counted in flight, so it is not stopped meanwhile."""
        if record is not None and not record.allows(model):
            raise model_not_allowed(record.key_id, model, record.models)
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.pool.use(model))
            except FineTuneError as exc:
                if exc.code == "model_not_found":
                    raise ApiError(
                        404,
                        f"The model {model!r} does not exist on this gateway: no fine-tuning job of it has "
                        "succeeded; GET /v1/models lists the models.",
                        code="model_not_found",
                        param="model",
                    ) from None
                raise api_error(exc) from None
            yield self._upstream_of(model)

    def _upstream_of(self, model: str) -> Upstream:
        resident = self.pool.servers[model]
        known = self._upstreams.get(model)
        if known is not None and known[0] is resident:
            return known[1]
        if known is not None:  # the server was stopped and started again: drop the old connections
            asyncio.ensure_future(known[1].aclose())
        route = ModelRoute(
            name=model,
            upstream=resident.url,
            upstream_key=SecretStr(self.pool.key_for(model)),
            max_concurrency=1,  # LLaMA-Factory's API server answers one request at a time
            read_timeout=300.0,
            tokenizer=self._tokenizer(model),
        )
        upstream = Upstream(route, self.metrics)
        self._upstreams[model] = (resident, upstream)
        return upstream

    def _tokenizer(self, model: str) -> Path | None:
        """The base model's folder when it holds tokenizer.json (exact usage counts when streaming)."""
        job = self.store.job_for_model(model)
        base = self.settings.base_model(job["model"]) if job else None
        folder = Path(base.model_path) if base else None
        return folder if folder is not None and (folder / "tokenizer.json").is_file() else None
