"""docker-compose.yml: valid Compose, and right where it matters (GPUs, ports, volumes, health, secrets).

The schema is the official Compose Specification (compose-spec/compose-spec, schema/compose-spec.json),
vendored as tests/fixtures/compose-spec.json from the copy PyPI's check-jsonschema 0.39.0 ships
(check_jsonschema/builtin_schemas/vendor/compose-spec.json, sha256 d549057e...0e64); its Apache-2.0
license is tests/fixtures/compose-spec.LICENSE. No Docker engine runs here, so Compose's own variable
interpolation is reimplemented below (the subset the file uses) to check the values it produces.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
GPU_SERVICES = ("webui", "train", "api")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)
VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        present = name in env
        if op in (":-", ":?"):
            present = present and env[name] != ""
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise MissingVariable(f"{name}: {arg}")
        return arg if op else ""

    return VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, Any]:
    """The file as Compose sees it with .env.example filled in and a real API_KEY."""
    env = {**read_env_file(ENV_EXAMPLE), "API_KEY": "k-3f9a1c7e52b04d8e"}
    return interpolate(compose, env)


def test_vendored_schema_is_the_recorded_one() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_matches_the_compose_specification(compose, resolved, validator) -> None:
    for document in (compose, resolved):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_rejects(compose, validator) -> None:
    # The validation above means something only if the schema catches mistakes like these.
    typo = json.loads(json.dumps(compose))
    typo["services"]["webui"]["helthcheck"] = typo["services"]["webui"].pop("healthcheck")
    assert not validator.is_valid(typo)
    bad_condition = json.loads(json.dumps(compose))
    bad_condition["services"]["gateway"]["depends_on"]["api"]["condition"] = "healthy"
    assert not validator.is_valid(bad_condition)


def test_services_and_commands(resolved) -> None:
    services = resolved["services"]
    assert set(services) == {"webui", "train", "api", "gateway"}
    for name in GPU_SERVICES:
        assert services[name]["image"] == "hiyouga/llamafactory:latest"
        assert services[name]["working_dir"] == "/app"
    assert services["webui"]["command"] == ["llamafactory-cli", "webui"]
    assert services["api"]["command"] == ["llamafactory-cli", "api", "/app/config/infer.yaml"]
    assert services["train"]["command"] == ["llamafactory-cli", "train", "/app/config/train.yaml"]
    assert services["train"]["profiles"] == ["train"]
    assert services["train"]["restart"] == "no"
    assert "profiles" not in services["webui"] and "profiles" not in services["api"]
    assert services["gateway"]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert (ROOT / services["gateway"]["build"]["dockerfile"]).is_file()


def test_image_tag_comes_from_the_environment(compose) -> None:
    env = {"API_KEY": "k-3f9a1c7e52b04d8e", "LLAMAFACTORY_IMAGE": "hiyouga/llamafactory:0.9.5"}
    services = interpolate(compose, env)["services"]
    assert {services[name]["image"] for name in GPU_SERVICES} == {"hiyouga/llamafactory:0.9.5"}


def test_gpu_reservations(resolved) -> None:
    for name, service in resolved["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if name in GPU_SERVICES:
            assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name
            assert service["ipc"] == "host", name
        else:
            assert devices is None, f"{name} must not hold GPUs"


def test_ports(resolved) -> None:
    services = resolved["services"]
    assert services["webui"]["ports"] == ["127.0.0.1:7860:7860"]  # no authentication: loopback only
    assert services["webui"]["environment"]["GRADIO_SERVER_NAME"] == "0.0.0.0"
    assert services["webui"]["environment"]["GRADIO_SERVER_PORT"] == "7860"
    # The API server listens for the gateway; on the host it is reachable from localhost only.
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["api"]["environment"]["API_VERBOSE"] == "0"  # no request bodies in its log
    assert services["api"]["environment"]["API_PORT"] == "8000"
    assert services["gateway"]["ports"] == ["8080:8080"]
    assert "ports" not in services["train"]


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["target"]: volume for volume in service["volumes"]}


def test_volumes(resolved) -> None:
    services = resolved["services"]
    for name in ("webui", "train"):
        mounts = _mounts(services[name])
        assert mounts["/app/data"]["source"] == "./compose/data" and mounts["/app/data"]["read_only"]
        bundled = mounts["/app/data/bundled"]
        assert bundled["source"] == "./datasets" and bundled["read_only"]
        assert mounts["/app/saves"]["source"] == "./outputs" and not mounts["/app/saves"].get("read_only")
        assert mounts["/root/.cache/huggingface"]["source"] == "./hf_cache"
    assert _mounts(services["train"])["/app/config/train.yaml"]["source"] == "./compose/train.yaml"
    api = _mounts(services["api"])
    assert api["/app/config/infer.yaml"]["source"] == "./compose/infer.yaml"
    assert api["/app/saves"]["source"] == "./outputs" and api["/app/saves"]["read_only"]
    assert "/root/.cache/huggingface" in api
    assert services["gateway"]["volumes"] == ["gateway-data:/data"]
    assert "gateway-data" in resolved["volumes"]
    # Every committed file or folder mounted by default exists, and the data folder has the mount point.
    for service in services.values():
        for volume in service["volumes"]:
            if isinstance(volume, dict) and volume["source"].startswith(("./compose/", "./datasets")):
                assert (ROOT / volume["source"]).exists(), volume["source"]
    assert (ROOT / "compose" / "data" / "bundled").is_dir()
    assert (ROOT / "datasets" / "identity.json").is_file()


def test_healthchecks_and_dependencies(resolved) -> None:
    services = resolved["services"]
    for name in ("webui", "api", "gateway"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and check["retries"] >= 1, name
    assert "7860/" in services["webui"]["healthcheck"]["test"][-1]
    assert "/v1/models" in services["api"]["healthcheck"]["test"][-1]
    assert "/healthz" in services["gateway"]["healthcheck"]["test"][-1]
    assert services["gateway"]["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_nothing_privileged_or_on_the_host_network(resolved) -> None:
    for name, service in resolved["services"].items():
        assert not service.get("privileged"), name
        assert service.get("network_mode") not in ("host",), name
        assert service.get("pid") != "host" and not service.get("cap_add"), name
        for port in service.get("ports", []):
            assert "host" not in str(port)


def test_secrets_have_no_working_default(compose) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    uses = [m for m in VAR.finditer(text) if SECRET_NAME.search(m["name"])]
    assert {m["name"] for m in uses} == {"API_KEY", "HF_TOKEN"}
    for use in uses:
        assert use["op"] in (None, ":?", "?") or use["arg"] == "", f"{use[0]} has a default"
    # Without an API_KEY, Compose refuses the file instead of starting an open API server.
    for env in ({}, read_env_file(ENV_EXAMPLE)):
        with pytest.raises(MissingVariable, match="API_KEY"):
            interpolate(compose["services"]["api"], env)
        with pytest.raises(MissingVariable, match="API_KEY"):
            interpolate(compose["services"]["gateway"], env)
    interpolate(compose["services"]["webui"], {})  # the web UI needs no secret


def test_env_example_documents_every_variable_and_no_secret() -> None:
    used = {m["name"] for m in VAR.finditer(COMPOSE.read_text(encoding="utf-8"))}
    example = read_env_file(ENV_EXAMPLE)
    assert used <= set(example), f"undocumented: {sorted(used - set(example))}"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f"{name} has a value in .env.example"


def test_gateway_routes_to_the_api_service(resolved, monkeypatch: pytest.MonkeyPatch) -> None:
    from wrapper.gateway.settings import load_settings

    environment = resolved["services"]["gateway"]["environment"]
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert (settings.host, settings.port, settings.auth) == ("0.0.0.0", 8080, "keys")
    [route] = settings.models
    assert route.name == resolved["services"]["api"]["environment"]["API_MODEL_NAME"] == "lfwrap"
    assert route.upstream == "http://api:8000"
    assert route.upstream_key is not None
    assert route.upstream_key.get_secret_value() == resolved["services"]["api"]["environment"]["API_KEY"]


class _ModelsHandler(http.server.BaseHTTPRequestHandler):
    """Answers like LLaMA-Factory's API server: /v1/models behind a bearer key."""

    key = "k-3f9a1c7e52b04d8e"

    def do_GET(self) -> None:  # noqa: N802
        ok = self.path == "/v1/models" and self.headers.get("Authorization") == f"Bearer {self.key}"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"data": []}' if ok else b'{"detail": "Invalid API key"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def models_server() -> Iterator[tuple[int, str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1]), _ModelsHandler.key
    server.shutdown()
    server.server_close()


def test_api_healthcheck_command_really_checks_the_key(resolved, models_server) -> None:
    port, key = models_server
    test = resolved["services"]["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    assert code != test[3]

    def run(api_key: str) -> int:
        env = {"API_KEY": api_key, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
        return proc.returncode

    assert run(key) == 0
    assert run("k-wrong") != 0


def _load_render_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("docker_render", ROOT / "compose" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stack_files_are_what_render_produces(tmp_path: Path) -> None:
    # The autouse fixture gives a fresh $LFWRAP_HOME: only the bundled datasets are registered.
    render = _load_render_script()
    written = render.render_stack(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "data/dataset_info.json", "infer.yaml", "train.yaml",
    ]
    for path in written:
        committed = ROOT / "compose" / path.relative_to(tmp_path)
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed} is stale; run `python compose/render.py` and commit the result"
        )


def test_stack_files_fit_together_inside_the_container() -> None:
    info = json.loads((ROOT / "compose" / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert {"identity", "alpaca_demo", "sharegpt_demo", "dpo_demo", "kto_demo"} <= set(info)
    for name, entry in info.items():
        # /app/data/bundled/X is ./datasets/X on the host.
        assert entry["file_name"].startswith("bundled/"), name
        assert (ROOT / "datasets" / entry["file_name"].removeprefix("bundled/")).is_file(), name
    train = yaml.safe_load((ROOT / "compose" / "train.yaml").read_text(encoding="utf-8"))
    infer = yaml.safe_load((ROOT / "compose" / "infer.yaml").read_text(encoding="utf-8"))
    assert train["dataset_dir"] == "data" and train["dataset"] in info  # /app/data from working dir /app
    assert train["output_dir"].startswith("saves/")  # /app/saves = the persistent outputs
    assert infer["adapter_name_or_path"] == train["output_dir"]
    assert infer["model_name_or_path"] == train["model_name_or_path"]
    assert infer["template"] == train["template"]


def test_render_script_takes_overrides_and_refuses_unknown_keys(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "compose" / "render.py"), "--out", str(out), "--run", "conch",
         "--set", "num_train_epochs=5"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    train = yaml.safe_load((out / "train.yaml").read_text(encoding="utf-8"))
    assert train["num_train_epochs"] == 5
    assert train["output_dir"] == "saves/Qwen2.5-0.5B-Instruct/lora/conch"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "compose" / "render.py"), "--out", str(out),
         "--set", "num_train_epoch=5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "num_train_epochs" in proc.stderr and "Traceback" not in proc.stderr
