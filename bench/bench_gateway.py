"""Gateway benchmark: the same stand-in upstream measured directly and through each proxy, in one run.

Targets (each its own process): the stand-in directly; nginx proxy_pass (the floor, when installed);
the lfwrap gateway with keys, routing, metrics and access log on; the gateway's stack with nothing
else (a raw-ASGI proxy on granian with the gateway's own httptools client: the floor the gateway can
reach); a minimal Starlette + aiohttp proxy and a minimal FastAPI + httpx proxy (what the hot-path
choice was measured against); LiteLLM's proxy when a `litellm` executable is found ($LITELLM, or
/tmp/litellm-venv/bin/litellm; bench only, never a dependency: its pins clash with the project's, so it
lives in its own venv: `python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install
'litellm[proxy]'`). Load: Debian's wrk, one thread (else bench/gateway/loadgen.py in its own
process); streamed chunk timing: loadgen.py.

The machine's load moves every figure, so the targets are measured in interleaved rounds (each round
measures every target once, c=1 then c=64) and each round's figures are compared with that round's
direct ones; the median and the best round are reported. `--baseline DIR` adds a second gateway
served from another lfwrap source tree (e.g. `git archive HEAD~1 | tar -x -C DIR`), to measure a change
side by side.

    $ python bench/bench_gateway.py                      # BENCH_SECONDS=5 per measurement, 1 round
    $ python bench/bench_gateway.py --rounds 3 --quick   # direct, nginx, the gateway and its floor
    $ python bench/bench_gateway.py --rounds 3 --quick --baseline /tmp/lfwrap-before
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "gateway"))
sys.path.insert(0, str(HERE.parent))

import nginx  # noqa: E402
import wrk  # noqa: E402
from procs import Proc, free_port, python_cmd  # noqa: E402

from wrapper.gateway.keys import KeyStore  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
STREAM_REQUESTS = int(os.environ.get("BENCH_STREAM_REQUESTS", "50"))
CHUNKS, INTERVAL_MS = 20, 10
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "请问你是谁"}]})
PATH = "/v1/chat/completions"


def litellm_binary() -> str | None:
    for candidate in (os.environ.get("LITELLM"), "/tmp/litellm-venv/bin/litellm", shutil.which("litellm")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def measure_plain(url: str, key: str, work: Path, connections: int) -> dict[str, float]:
    if wrk.available():
        result = wrk.run(url, wrk.lua_script(work / "post.lua", BODY, key), connections, SECONDS)
        return {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "rps": result.rps, "errors": result.errors}
    out = subprocess.run(
        python_cmd(str(HERE / "gateway" / "loadgen.py"), "plain", url, key, str(connections), str(SECONDS)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def measure_stream(url: str, key: str) -> dict[str, float]:
    out = subprocess.run(
        python_cmd(str(HERE / "gateway" / "loadgen.py"), "stream", url, key, str(STREAM_REQUESTS)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median and best reported)")
    parser.add_argument(
        "--quick", action="store_true", help="direct, nginx, the gateway(s) and the granian floor only"
    )
    parser.add_argument("--baseline", metavar="DIR", help="also serve a gateway from this lfwrap source tree")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.baseline and not (Path(args.baseline) / "wrapper" / "gateway").is_dir():
        parser.error(f"--baseline {args.baseline}: no wrapper/gateway in that folder")
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    home = work / "home"
    env = {"LFWRAP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    procs: list[Proc] = []
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs.append(
            Proc(
                "stand-in",
                python_cmd(
                    str(HERE.parent / "tests" / "gateway_standin.py"),
                    "--port",
                    str(up_port),
                    "--chunks",
                    str(CHUNKS),
                    "--interval-ms",
                    str(INTERVAL_MS),
                ),
                upstream + "/v1/models",
                work / "standin.log",
            )
        )
        targets: dict[str, str] = {"direct": upstream}

        ng = nginx.binary()
        if ng:
            port = free_port()
            conf = nginx.write_conf(work / "nginx", port, up_port)
            procs.append(
                Proc(
                    "nginx",
                    [ng, "-c", str(conf), "-p", str(work / "nginx")],
                    f"http://127.0.0.1:{port}/v1/models",
                    work / "nginx.log",
                )
            )
            targets["nginx"] = f"http://127.0.0.1:{port}"

        key = KeyStore(home / "gateway" / "keys.db").create(name="bench")[1]
        trees = {"lfwrap gateway": HERE.parent}
        if args.baseline:
            trees["gateway (baseline)"] = Path(args.baseline).resolve()
        for name, tree in trees.items():
            port = free_port()
            config = work / f"gateway-{port}.yaml"
            config.write_text(
                json.dumps(
                    {
                        "host": "127.0.0.1",
                        "port": port,
                        "models": [
                            {"name": "bench", "upstream": upstream, "max_concurrency": 256, "max_queue": 1024}
                        ],
                    }
                )
            )
            procs.append(
                Proc(
                    name,
                    python_cmd(
                        "-m", "wrapper.cli.main", "gateway", "--config", str(config), "--log-level", "warning"
                    ),
                    f"http://127.0.0.1:{port}/healthz",
                    work / f"gateway-{port}.log",
                    {**env, "PYTHONPATH": str(tree)},
                    cwd=tree,
                )
            )
            targets[name] = f"http://127.0.0.1:{port}"

        kinds = ["granian_httptools"] + ([] if args.quick else ["starlette_aiohttp", "fastapi_httpx"])
        for kind in kinds:
            port = free_port()
            procs.append(
                Proc(
                    kind,
                    python_cmd(str(HERE / "gateway" / "alt_proxies.py"), kind, upstream, str(port)),
                    f"http://127.0.0.1:{port}/v1/models",
                    work / f"{kind}.log",
                    {"PYTHONPATH": str(HERE.parent)},
                )
            )
            targets[f"minimal {kind.replace('_', ' + ')}"] = f"http://127.0.0.1:{port}"

        litellm = None if args.quick else litellm_binary()
        litellm_key = "sk-" + secrets.token_urlsafe(32)
        keys = {"LiteLLM proxy": litellm_key}  # every other target takes the gateway's key
        if litellm:
            port = free_port()
            (work / "litellm.yaml").write_text(
                json.dumps(
                    {
                        "model_list": [
                            {
                                "model_name": "bench",
                                "litellm_params": {
                                    "model": "openai/bench",
                                    "api_base": upstream + "/v1",
                                    "api_key": "bench-upstream",
                                },
                            }
                        ]
                    }
                )
            )
            try:
                procs.append(
                    Proc(
                        "litellm",
                        [
                            litellm,
                            "--config",
                            str(work / "litellm.yaml"),
                            "--port",
                            str(port),
                            "--host",
                            "127.0.0.1",
                        ],
                        f"http://127.0.0.1:{port}/health/liveliness",
                        work / "litellm.log",
                        {
                            # it refuses to start without a strong sk- key, and fetches a price list
                            # from the network unless told to use its own copy
                            "LITELLM_MASTER_KEY": litellm_key,
                            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                        },
                    )
                )
                targets["LiteLLM proxy"] = f"http://127.0.0.1:{port}"
            except RuntimeError as exc:
                print(f"LiteLLM did not start, left out: {str(exc).splitlines()[0]}")

        loader = "wrk -t1" if wrk.available() else "loadgen.py (wrk not installed)"
        print(
            f"load: {loader}, {SECONDS} s per measurement; "
            f"stand-in streams {CHUNKS} chunks every {INTERVAL_MS} ms"
        )
        rounds: list[dict[str, dict[str, float]]] = []
        for number in range(1, args.rounds + 1):
            results: dict[str, dict[str, float]] = {}
            for name, base in targets.items():
                c1 = measure_plain(base + PATH, keys.get(name, key), work, 1)
                c64 = measure_plain(base + PATH, keys.get(name, key), work, 64)
                results[name] = {
                    "p50": c1["p50_ms"],
                    "p99": c1["p99_ms"],
                    "rps64": c64["rps"],
                    "errors": c1["errors"] + c64["errors"],
                }
            direct = results["direct"]
            for r in results.values():
                r["added"] = r["p50"] - direct["p50"]
                r["ratio"] = r["rps64"] / direct["rps64"]
            rounds.append(results)
            print(f"round {number}/{args.rounds} (direct {direct['rps64']:.0f} req/s at c=64)")
            print(
                f"  {'in front of the stand-in':<34} {'p50 c=1':>9} {'p99 c=1':>9} {'added p50':>10} "
                f"{'req/s c=64':>11} {'vs direct':>9} {'errors':>6}"
            )
            for name, r in results.items():
                print(
                    f"  {name:<34} {r['p50']:>7.3f}ms {r['p99']:>7.3f}ms {r['added']:>+8.3f}ms "
                    f"{r['rps64']:>11.0f} {r['ratio']:>8.3f}x {int(r['errors']):>6}"
                )
        errors = {name: sum(int(r[name]["errors"]) for r in rounds) for name in targets}
        if len(rounds) > 1:
            print(f"over {len(rounds)} rounds: median (best)")
            for name in targets:
                if name == "direct":
                    continue
                added = [r[name]["added"] for r in rounds]
                ratio = [r[name]["ratio"] for r in rounds]
                print(
                    f"  {name:<34} added p50 {statistics.median(added):+.3f} ms ({min(added):+.3f}), "
                    f"c=64 {statistics.median(ratio):.3f}x ({max(ratio):.3f}x) direct, "
                    f"errors {errors[name]}"
                )

        streams = {"direct": measure_stream(upstream + PATH, key)}
        for name in trees:
            streams[name] = measure_stream(targets[name] + PATH, key)
        for name, s in streams.items():
            print(
                f"stream {name:<20} TTFT p50 {s['ttft_p50_ms']:.3f} ms, "
                f"chunk gap p50 {s['gap_p50_ms']:.3f} ms, "
                f"p99 {s['gap_p99_ms']:.3f} ms, mean {s['gap_mean_ms']:.3f} ms ({int(s['chunks'])} chunks)"
            )
        s_direct, s_gateway = streams["direct"], streams["lfwrap gateway"]

        def med(name: str, figure: str) -> float:
            return statistics.median(r[name][figure] for r in rounds)

        gw = "lfwrap gateway"
        best = f" (best {min(r[gw]['added'] for r in rounds):+.3f})" if len(rounds) > 1 else ""
        best64 = f" (best {max(r[gw]['ratio'] for r in rounds):.2f}x)" if len(rounds) > 1 else ""
        summary = [
            f"gateway added p50 c=1 {med(gw, 'added'):+.3f} ms{best} (goal <= 0.6)",
            f"req/s c=64 {med(gw, 'ratio'):.2f}x direct{best64} (goal >= 0.5)",
            f"added TTFT {s_gateway['ttft_p50_ms'] - s_direct['ttft_p50_ms']:+.3f} ms",
            f"chunk gap p50 {s_gateway['gap_p50_ms'] - s_direct['gap_p50_ms']:+.3f} ms (goal within 1)",
        ]
        if len(rounds) > 1:
            summary.insert(0, f"median of {len(rounds)} rounds")
        if "gateway (baseline)" in targets:
            summary.append(
                f"baseline {med('gateway (baseline)', 'added'):+.3f} ms, "
                f"{med('gateway (baseline)', 'ratio'):.2f}x direct"
            )
        if "nginx" in targets:
            summary.append(f"nginx {med('nginx', 'ratio'):.2f}x direct")
        else:
            summary.append("nginx not installed (not measured)")
        if "minimal fastapi + httpx" in targets:
            fastapi = statistics.median(
                r[gw]["rps64"] / r["minimal fastapi + httpx"]["rps64"] for r in rounds
            )
            summary.append(f"{fastapi:.1f}x fastapi+httpx req/s")
        if "LiteLLM proxy" in targets:
            litellm_x = statistics.median(r[gw]["rps64"] / r["LiteLLM proxy"]["rps64"] for r in rounds)
            summary.append(f"{litellm_x:.0f}x LiteLLM req/s (goal >= 50)")
        elif not args.quick:
            summary.append("LiteLLM not installed (not measured)")
        print("SUMMARY " + "; ".join(summary))
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
