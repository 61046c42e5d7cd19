"""Time to report a misspelled key: cold `lfwrap validate` vs `llamafactory-cli train` on the same config.

    $ .venv/bin/python bench/bench_validate.py [--runs 5] [--lf-runs 1]

Both run as fresh subprocesses on one config whose only mistake is `lerning_rate`. The clock stops when
the key is reported: lfwrap exits; LLaMA-Factory is killed as soon as its output names the key (its
HfArgumentParser refuses unused keys only after importing torch, transformers and itself).
Figures are printed, then one summary line with the ratio measured in this run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wrapper.launch.process import stop_group

KEY = "lerning_rate"
CONFIG = f"""\
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
dataset: identity
template: qwen
cutoff_len: 128
output_dir: saves/bench
per_device_train_batch_size: 1
{KEY}: 1.0e-4
num_train_epochs: 1.0
report_to: none
"""


def _bin(name: str) -> list[str] | None:
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return [str(local)]
    found = shutil.which(name)
    return [found] if found else None


def time_lfwrap(config: Path, env: dict[str, str]) -> float:
    command = _bin("lfwrap") or [sys.executable, "-m", "wrapper.cli.main"]
    start = time.perf_counter()
    argv = [*command, "validate", str(config)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    if proc.returncode != 1 or f"unknown key `{KEY}`" not in proc.stdout:
        raise SystemExit(f"lfwrap validate did not report {KEY}:\n{proc.stdout}{proc.stderr}")
    return elapsed


def time_llamafactory(config: Path, env: dict[str, str], workdir: Path) -> float:
    command = _bin("llamafactory-cli")
    if command is None:
        raise SystemExit("llamafactory-cli not found: install the `local` extra (pip install -e '.[local]').")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if KEY in line:
                return time.perf_counter() - start
            tail = (tail + [line])[-20:]
        raise SystemExit("llamafactory-cli exited without naming the key:\n" + "".join(tail))
    finally:
        stop_group(proc, grace=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="cold lfwrap validate runs (median reported)")
    parser.add_argument("--lf-runs", type=int, default=1, help="llamafactory-cli runs (median reported)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}
    with tempfile.TemporaryDirectory(prefix="bench_validate_") as tmp:
        workdir = Path(tmp)
        env["LFWRAP_HOME"] = str(workdir / "home")
        config = workdir / "misspelled.yaml"
        config.write_text(CONFIG, encoding="utf-8")
        # LLaMA-Factory takes dataset_dir from where it runs, lfwrap from the config's folder: the same here.
        data = workdir / "data"
        data.mkdir()
        info = '{"identity": {"file_name": "identity.json"}}\n'
        (data / "dataset_info.json").write_text(info, encoding="utf-8")

        lfwrap_times = [time_lfwrap(config, env) for _ in range(args.runs)]
        for i, seconds in enumerate(lfwrap_times, 1):
            print(f"lfwrap validate, cold run {i}: {seconds:.3f} s")
        lf_times = [time_llamafactory(config, env, workdir) for _ in range(args.lf_runs)]
        for i, seconds in enumerate(lf_times, 1):
            print(f"llamafactory-cli train until it names `{KEY}`, run {i}: {seconds:.2f} s")

    ours, theirs = statistics.median(lfwrap_times), statistics.median(lf_times)
    ratio = theirs / ours
    verdict = "met" if ratio >= 20 else "MISSED"
    print(
        f"summary: misspelled key reported by lfwrap validate in {ours:.3f} s vs llamafactory-cli train in "
        f"{theirs:.2f} s: {ratio:.0f}x faster (goal >= 20x, {verdict})"
    )


if __name__ == "__main__":
    main()
