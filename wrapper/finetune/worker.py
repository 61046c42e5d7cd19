"""The job worker: validates files, starts queued jobs (max_parallel_jobs at once) through the
launcher, follows them into events, checkpoints and the job object, and cancels them.

    worker = Worker(store, settings)
    task = asyncio.create_task(worker.run())     # until worker.stop(); training runs keep going
    worker.cancel(job_id)                        # from any thread: stops the run's process group

Each job runs as a normal run folder named after the job id (its supervisor in its own session), so
stopping the worker or the gateway does not stop training. After a restart (`recover`, run first):
  - a job whose run still runs is followed again, without repeating events already recorded;
  - a job whose run ended meanwhile gets that result;
  - a job whose supervisor is gone without a result (killed, machine rebooted) is resumed from its last
    complete checkpoint-N through the launcher's resume (at most MAX_RESUMES times, once the run's
    lock is free); with no checkpoint it fails with error code `job_interrupted` saying so.
The same holds when the supervisor dies while the worker runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wrapper.errors import FineTuneError, LfwrapError, RunError
from wrapper.finetune import objects
from wrapper.finetune.files import save_results
from wrapper.finetune.jobs import create_job_run, get_job, validation_error
from wrapper.finetune.settings import FineTuningSettings
from wrapper.finetune.store import Store
from wrapper.launch import runs
from wrapper.launch import train as launcher

POLL_SECONDS = 0.5
LOCK_WAIT_SECONDS = 60.0  # how long a lost run's last processes may take to exit before giving up
MAX_RESUMES = 3
log = logging.getLogger(__name__)


def _seconds(clock: str) -> int | None:
    """'1 day, 0:01:23' or '0:01:23' (LLaMA-Factory's remaining_time) in seconds."""
    try:
        days = 0
        if "day" in clock:
            head, clock = clock.split(",", 1)
            days = int(head.split()[0])
        hours, minutes, seconds = (int(float(part)) for part in clock.strip().split(":"))
        return days * 86400 + hours * 3600 + minutes * 60 + seconds
    except (ValueError, IndexError):
        return None


def _complete_checkpoint(output: Path) -> Path | None:
    """The last checkpoint-N the trainer finished writing (trainer_state.json is its last file); later,
    unfinished ones are set aside as incomplete-checkpoint-N so the launcher's resume skips them."""
    while (checkpoint := runs.last_checkpoint(output)) is not None:
        if (checkpoint / "trainer_state.json").is_file():
            return checkpoint
        checkpoint.rename(checkpoint.with_name(f"incomplete-{checkpoint.name}"))
    return None


class Worker:
    def __init__(self, store: Store, settings: FineTuningSettings, poll_seconds: float = POLL_SECONDS):
        self.store = store
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()  # one state change at a time: the loop's step or a cancel
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._offsets: dict[str, int] = {}
        self._stop = asyncio.Event()

    # the loop
    async def run(self) -> None:
        await asyncio.to_thread(self.recover)
        while not self._stop.is_set():
            await asyncio.to_thread(self.step)
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        """End the loop after its current step; running trainings go on (a restart follows them)."""
        self._stop.set()

    def step(self) -> None:
        with self._lock:
            for job in self.store.jobs_with_status("validating_files"):
                self._guarded(self._validate, job)
            for job in self.store.jobs_with_status("running"):
                self._guarded(self._follow, job)
            free = self.settings.max_parallel_jobs - len(self.store.jobs_with_status("running"))
            for job in self.store.jobs_with_status("queued")[: max(free, 0)]:
                self._guarded(self._start, job)
            for job_id, process in list(self._processes.items()):
                if process.poll() is not None:
                    del self._processes[job_id]

    def _guarded(self, action: Callable[[dict[str, Any]], None], job: dict[str, Any]) -> None:
        """One job's trouble (a bug, a full disk) fails that job, not the worker and the other jobs."""
        try:
            action(job)
        except Exception as exc:
            log.exception("fine-tuning job %s", job["id"])
            error = objects.error_object("internal_error", f"{exc.__class__.__name__}: {exc}", None)
            self._finish(job["id"], "failed", error)

    # state changes
    def _event(self, job_id: str, message: str, level: str = "info", **kw: Any) -> None:
        self.store.add_event(objects.event_object(job_id, message, level=level, **kw))

    def _finish(self, job_id: str, status: str, error: dict[str, Any] | None = None, **changes: Any) -> None:
        self.store.update_job(
            job_id, status=status, error=error, finished_at=objects.now(), estimated_finish=None, **changes
        )
        if status == "succeeded":
            self._event(job_id, "The job has successfully completed")
        elif status == "cancelled":
            self._event(job_id, "The job was cancelled")
        else:
            self._event(job_id, f"The job failed: {error['message'] if error else 'unknown reason'}", "error")

    def _validate(self, job: dict[str, Any]) -> None:
        error = validation_error(job, self.store.private(job["id"]))
        if error is not None:
            self._finish(job["id"], "failed", error)
            return
        self._event(job["id"], f"Validated training file: {job['training_file']}")
        self.store.update_job(job["id"], status="queued")
        self._event(job["id"], "Fine-tuning job queued")

    def _start(self, job: dict[str, Any]) -> None:
        made = runs.run_path(job["id"])
        if (made / runs.META_FILE).is_file():  # made by a worker that died before recording it
            self.store.update_job(job["id"], status="running", private={"run_dir": str(made)})
            self._recover(self.store.job(job["id"]) or job)
            return
        try:
            run_dir = create_job_run(self.store, self.settings, job)
            self._processes[job["id"]] = launcher.launch(run_dir)
        except LfwrapError as exc:
            code = exc.code if isinstance(exc, FineTuneError) else "launch_failed"
            self._finish(job["id"], "failed", objects.error_object(code, str(exc), None))
            return
        self.store.update_job(job["id"], status="running", private={"run_dir": str(run_dir)})
        self._event(job["id"], f"Fine-tuning job started (run {run_dir.name})")

    def _follow(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        private = self.store.private(job_id)
        run_dir = Path(private.get("run_dir") or runs.run_path(job_id))
        if not (run_dir / runs.META_FILE).is_file():
            self._finish(
                job_id,
                "failed",
                objects.error_object(
                    "job_interrupted", f"The job's run folder {run_dir} is gone; create the job again.", None
                ),
            )
            return
        meta = launcher.refresh(run_dir)
        output = Path(meta.output_dir)
        changes = self._read_log(job_id, output / runs.TRAINER_LOG, private)
        self._checkpoints(job, output, changes.get("last_metrics") or private.get("last_metrics") or {})
        changes.pop("last_metrics", None)
        if meta.status == "succeeded":
            name = objects.fine_tuned_name(job["model"], job.get("user_provided_suffix"), job_id)
            results = save_results(self.store, job_id, self.store.metrics(job_id))
            self._finish(
                job_id, "succeeded", None, fine_tuned_model=name, result_files=[results["id"]], **changes
            )
        elif meta.status == "cancelled":
            self._finish(job_id, "cancelled", None, **changes)
        elif meta.status == "failed" and meta.error[:1] and meta.error[0].startswith(runs.LOST):
            if changes:
                self.store.update_job(job_id, **changes)
            self._recover(job)  # its supervisor died without a result: resume, or fail saying why
        elif meta.status == "failed":
            message = " ".join(meta.error) or f"LLaMA-Factory exited with status {meta.exit_code}."
            self._finish(job_id, "failed", objects.error_object("training_failed", message, None), **changes)
        elif changes:
            self.store.update_job(job_id, **changes)

    def _read_log(self, job_id: str, path: Path, private: dict[str, Any]) -> dict[str, Any]:
        """New trainer_log.jsonl rows as metrics events; the job fields they change."""
        try:
            with path.open("rb") as handle:
                handle.seek(self._offsets.get(job_id, 0))
                chunk = handle.read()
        except FileNotFoundError:
            return {}
        complete = chunk[: chunk.rfind(b"\n") + 1]  # an unfinished last line waits for the next poll
        self._offsets[job_id] = self._offsets.get(job_id, 0) + len(complete)
        last_step, last_eval = private.get("last_step", 0), private.get("last_eval_step", 0)
        metrics: dict[str, Any] = dict(private.get("last_metrics") or {})
        changes: dict[str, Any] = {}
        for line in complete.splitlines():
            try:
                row = json.loads(line)
                step, total = int(row["current_steps"]), int(row["total_steps"])
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(row.get("total_tokens"), int):
                changes["trained_tokens"] = row["total_tokens"]
            remaining = _seconds(str(row.get("remaining_time", "")))
            if remaining is not None:
                changes["estimated_finish"] = objects.now() + remaining
            data: dict[str, Any] | None = None
            if isinstance(row.get("loss"), (int, float)) and step > last_step:
                last_step = step
                data = {"step": step, "train_loss": float(row["loss"]), "total_steps": total}
            elif isinstance(row.get("eval_loss"), (int, float)) and step > last_eval:
                last_eval = step
                data = {
                    "step": step,
                    "train_loss": metrics.get("train_loss"),
                    "total_steps": total,
                    "valid_loss": float(row["eval_loss"]),
                }
            if data is None:
                continue
            metrics = {k: v for k, v in {**metrics, **data}.items() if k != "total_steps"}
            text = (
                f"Step {step}/{total}: training loss={data['train_loss']:.4f}"
                if data["train_loss"] is not None
                else f"Step {step}/{total}"
            )
            if "valid_loss" in data:
                text += f", validation loss={data['valid_loss']:.4f}"
            self._event(job_id, text, type="metrics", data=data)
        if last_step != private.get("last_step", 0) or last_eval != private.get("last_eval_step", 0):
            keep = {"last_step": last_step, "last_eval_step": last_eval, "last_metrics": metrics}
            self.store.update_job(job_id, private=keep)
            changes["last_metrics"] = metrics
        return changes

    def _checkpoints(self, job: dict[str, Any], output: Path, metrics: dict[str, Any]) -> None:
        if not output.is_dir():
            return
        found = [(runs.CHECKPOINT_PATTERN.match(folder.name), folder) for folder in output.iterdir()]
        # oldest step first, so the list (newest recorded first) reads newest step first
        matched = [(match, folder) for match, folder in found if match]
        for match, folder in sorted(matched, key=lambda item: int(item[0].group(1))):
            if not (folder / "trainer_state.json").is_file():  # still being written
                continue
            step = int(match.group(1))
            name = objects.fine_tuned_name(job["model"], job.get("user_provided_suffix"), job["id"])
            kept = {"step": step, **{k: v for k, v in metrics.items() if k != "step"}}
            checkpoint = objects.checkpoint_object(
                job["id"], step=step, metrics=kept, model=name, created_at=int(folder.stat().st_mtime)
            )
            if self.store.add_checkpoint(checkpoint):
                self._event(job["id"], f"Checkpoint saved at step {step}")

    # restart and cancel
    def recover(self) -> None:
        """Deal with the jobs a previous worker left running (see the module docstring)."""
        with self._lock:
            for job in self.store.jobs_with_status("running"):
                self._recover(job)

    def _recover(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        run_dir = Path(self.store.private(job_id).get("run_dir") or runs.run_path(job_id))
        if not (run_dir / runs.META_FILE).is_file():
            return  # _follow fails it with a clear error
        meta = launcher.refresh(run_dir)
        if meta.status in ("queued", "running"):
            if meta.status == "queued" and meta.supervisor is None:  # made, never launched
                self._processes[job_id] = launcher.launch(run_dir)
            self._event(job_id, "The gateway restarted; following the job's run again")
            return
        if not (meta.status == "failed" and meta.error[:1] and meta.error[0].startswith(runs.LOST)):
            return  # it ended on its own while nobody watched: _follow records how
        checkpoint = _complete_checkpoint(Path(meta.output_dir))
        if checkpoint is None:
            self._finish(
                job_id,
                "failed",
                objects.error_object(
                    "job_interrupted",
                    "The job's training process stopped while the gateway was down (killed, or the machine "
                    "restarted) before it saved any checkpoint; create the job again.",
                    None,
                ),
            )
            return
        private = self.store.private(job_id)
        lock = runs.RunLock(run_dir)
        if not lock.acquire():  # a process of the killed run is still exiting: retry on the next step
            since = private.get("lost_since") or time.time()
            if time.time() - since < LOCK_WAIT_SECONDS:
                self.store.update_job(job_id, private={"lost_since": since})
                return
            message = (
                f"The job's training process stopped without a result, and a process of its run still holds "
                f"{lock.path}; stop it with `lfwrap runs cancel {run_dir.name}` and create the job again."
            )
            self._finish(job_id, "failed", objects.error_object("job_interrupted", message, None))
            return
        lock.release()
        if private.get("resumes", 0) >= MAX_RESUMES:
            message = (
                f"The job's training process stopped without a result {MAX_RESUMES + 1} times; giving up."
            )
            self._finish(job_id, "failed", objects.error_object("job_interrupted", message, None))
            return
        self.store.update_job(job_id, private={"lost_since": None, "resumes": private.get("resumes", 0) + 1})
        try:
            launcher.prepare_resume(run_dir)
            self._processes[job_id] = launcher.launch(run_dir)
        except LfwrapError as exc:
            self._finish(job_id, "failed", objects.error_object("job_interrupted", str(exc), None))
            return
        self._event(
            job_id,
            f"The job's training process stopped while the gateway was down; resumed from {checkpoint.name}",
            level="warn",
        )

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one by stopping its run's process group."""
        with self._lock:
            job = get_job(self.store, job_id)
            if job["status"] in objects.FINISHED:
                raise FineTuneError(
                    f"Job {job_id} already {job['status']}; nothing to cancel.",
                    code="job_not_cancellable",
                    param="job_id",
                    status=400,
                )
            run_dir = self.store.private(job_id).get("run_dir")
            if run_dir and (Path(run_dir) / runs.META_FILE).is_file():
                try:
                    meta = launcher.cancel_run(Path(run_dir))
                except RunError:  # the run ended by itself meanwhile: record how
                    self._follow(job)
                    return get_job(self.store, job_id)
                process = self._processes.pop(job_id, None)
                if process is not None:
                    process.wait(timeout=60)
                if meta.status == "succeeded":  # it finished just before the signal
                    self._follow(get_job(self.store, job_id))
                    return get_job(self.store, job_id)
            self._finish(job_id, "cancelled")
            return get_job(self.store, job_id)
