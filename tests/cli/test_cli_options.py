"""One meaning per option: shared declarations, the renamed options' old spellings, usage errors exit 2."""

from __future__ import annotations

import socket
from pathlib import Path

import click
import pytest
import yaml

from wrapper.cli.main import cli

DEPRECATED = {  # command -> the old spellings still accepted for one release
    ("serve",): ["--template"],
    ("gateway",): ["--model"],
    ("render",): ["--output"],
    ("webui",): ["--no-gpus"],
    ("eval",): ["--rag"],
}
ONE_TEXT = ["--set", "--backend", "--gpus", "--image", "--template", "--no-data-check"]  # one help text


def _commands() -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        found.append((path, command))
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, (*path, name))

    walk(cli, ())
    return found


def _options(command: click.Command) -> dict[str, click.Option]:
    return {
        name: param
        for param in command.params
        if isinstance(param, click.Option)
        for name in param.opts
        if name.startswith("--")
    }


def test_every_visible_option_has_help_and_shared_ones_have_one_text_and_metavar() -> None:
    texts: dict[str, set[str]] = {}
    for path, command in _commands():
        for name, option in _options(command).items():
            if option.hidden:
                assert name in DEPRECATED.get(path, []), (path, name)
                continue
            assert option.help, f"lfwrap {' '.join(path)} {name} has no help"
            if name in ONE_TEXT:
                texts.setdefault(name, set()).add(option.help)
            if name in ("--model", "--out", "--gpus", "--set"):
                assert option.metavar in ("MODEL", "DIR", "FILE", "all|none|IDS", "KEY=VALUE"), (path, name)
    for name, seen in texts.items():  # --set, --backend, --gpus, --image, ... mean one thing everywhere
        assert len(seen) == 1, (name, seen)
    assert set(texts) == set(ONE_TEXT)


def test_help_shows_the_new_names_only(lfwrap) -> None:
    serve = lfwrap("serve", "--help", check=True).stdout
    assert "--chat-template NAME" in serve and "--template" not in serve.replace("--chat-template", "")
    gateway = lfwrap("gateway", "--help", check=True).stdout
    assert "--model-name NAME" in gateway and "--model " not in gateway and "--model conch" not in gateway
    render = lfwrap("render", "--help", check=True).stdout
    assert "-o, --out FILE" in render and "--output" not in render
    for command in ("export", "eval", "demo-model"):
        assert "-o, --out DIR" in lfwrap(command, "--help", check=True).stdout
    webui = lfwrap("webui", "--help", check=True).stdout
    assert "--gpus all|none|IDS" in webui and "--no-gpus" not in webui
    assert "--rag-index INDEX" in lfwrap("eval", "--help", check=True).stdout
    assert "--model-name conch" in lfwrap("--help", check=True).stdout


@pytest.mark.parametrize("spelling", ["--chat-template", "--template"])
def test_serve_chat_template_reaches_the_infer_config_under_both_spellings(
    lfwrap, tmp_path: Path, spelling: str
) -> None:
    proc = lfwrap("serve", "--model", str(tmp_path), spelling, "nosuch")  # refused while rendering
    assert proc.returncode == 1 and "unknown chat template `nosuch`" in proc.stderr, proc.stderr
    note = "--template is deprecated, use --chat-template.\n"
    assert (note in proc.stderr) == (spelling == "--template")
    both = lfwrap("serve", "--model", str(tmp_path), "--chat-template", "a", "--template", "b")
    assert both.returncode == 2
    assert "--template and --chat-template are the same option; give --chat-template only." in both.stderr


@pytest.mark.rag  # the route names a retrieval index: its message comes from the rag extra
@pytest.mark.parametrize("spelling", ["--model-name", "--model"])
def test_gateway_route_name_under_both_spellings(lfwrap, spelling: str) -> None:
    args = ("--upstream", "http://127.0.0.1:9", spelling, "conch", "--rag-index", "nope", "--open")
    proc = lfwrap("gateway", *args)  # refused at start, naming the route
    assert proc.returncode == 1 and "Model 'conch' (rag.index 'nope'): No retrieval index" in proc.stderr
    assert ("--model is deprecated, use --model-name.\n" in proc.stderr) == (spelling == "--model")


@pytest.mark.parametrize("spelling", ["-o", "--out", "--output"])
def test_render_writes_its_file_under_every_spelling(lfwrap, tmp_path: Path, spelling: str) -> None:
    target = tmp_path / "sft.yaml"
    proc = lfwrap("render", "-t", "sft_lora", "--set", "lora_rank=4", spelling, str(target), check=True)
    assert yaml.safe_load(target.read_text(encoding="utf-8"))["lora_rank"] == 4 and proc.stdout == ""
    assert ("--output is deprecated, use --out.\n" in proc.stderr) == (spelling == "--output")


def test_webui_gpus_takes_the_train_syntax_and_no_gpus_still_works(lfwrap) -> None:
    proc = lfwrap("webui", "--no-gpus", "--gpus", "all")
    assert proc.returncode == 2 and "--no-gpus is deprecated, use --gpus none.\n" in proc.stderr
    assert "--no-gpus and --gpus none are the same option" in proc.stderr
    bad = lfwrap("webui", "--gpus", "zero")
    assert bad.returncode == 2 and "--gpus 'zero' is not valid; use all, none, or distinct" in bad.stderr
    ids = lfwrap("webui", "--backend", "docker", "--gpus", "0,1")
    assert ids.returncode == 2 and "the web UI's container takes all GPUs or none" in ids.stderr
    for args in (("--no-gpus", "--image", "x:1"), ("--gpus", "none", "--image", "x:1")):
        proc = lfwrap("webui", *args)  # both spellings parse; --image without docker is then refused
        assert proc.returncode == 2 and "--image only applies to --backend docker" in proc.stderr


def test_eval_rag_is_now_rag_index(lfwrap) -> None:
    proc = lfwrap("eval", "conch", "--rag", "a", "--rag-index", "b")
    assert proc.returncode == 2 and "--rag is deprecated, use --rag-index.\n" in proc.stderr
    assert "--rag and --rag-index are the same option; give --rag-index only." in proc.stderr


def test_usage_errors_exit_2_and_other_failures_exit_1(lfwrap) -> None:
    unknown = lfwrap("train", "--no-such-option")  # click's own usage error
    assert unknown.returncode == 2 and "No such option" in unknown.stderr
    out_of_range = lfwrap("serve", "--port", "0")
    assert out_of_range.returncode == 2 and "Invalid value for '--port'" in out_of_range.stderr
    ours = lfwrap("train", "-t", "sft_lora", "--config", "x.yaml")  # lfwrap's own usage error
    assert ours.returncode == 2
    assert ours.stderr == "Error: --template and --config exclude each other; give one of them.\n"
    missing = lfwrap("runs", "show", "nope")  # not a usage error: the run does not exist
    assert missing.returncode == 1 and "No run named 'nope'" in missing.stderr


@pytest.mark.parametrize(("args", "count"), [((), -1), (("--gpus", "none"), None), (("--no-gpus",), None)])
def test_webui_gpus_reach_the_container_request(
    engine, lfwrap, lfwrap_home: Path, monkeypatch, args, count
) -> None:
    monkeypatch.setenv("HF_HOME", str(lfwrap_home / "hf"))
    engine.hold = True  # the container "runs" but nothing answers on the port: the CLI gives up after 1 s
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = lfwrap("webui", "--backend", "docker", "--port", str(port), "--timeout", "1", *args)
    assert proc.returncode == 1 and "did not answer" in proc.stderr, proc.stderr
    [body] = engine.bodies("POST", "/containers/create")
    requests = body["HostConfig"].get("DeviceRequests") or []
    assert [request["Count"] for request in requests] == ([] if count is None else [count])
    assert not engine.containers  # stopped and removed
