"""`lfwrap webui --backend local` on CPU, looked at in a real headless Chromium (Debian's package).

Playwright's Python client drives the system browser at /usr/bin/chromium (never `playwright install`);
CI installs it with `apt-get install -y chromium`. The screenshot lands in artifacts/.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("playwright", reason="Playwright is not installed (pip install 'lfwrap[dev]')")
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.e2e


def _need_browser() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing; install Debian's chromium (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def webui_url(lfwrap, lfwrap_home: Path) -> Iterator[str]:
    _need_browser()
    # A user dataset registered before start must show up next to the bundled ones.
    lfwrap("data", "identity", "--name", "神奇海螺", "--author", "蟹堡王", check=True)
    _finished_cli_run(lfwrap_home, "conch", "Qwen/Qwen2.5-0.5B-Instruct")  # must join the checkpoint list
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli.main", "webui", "--backend", "local", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    try:
        while url is None:
            try:
                line = lines.get(timeout=300)
            except queue.Empty:
                pytest.fail(f"lfwrap webui printed no URL; output so far: {''.join(seen)}")
            seen.append(line)
            if line.startswith("Web UI ready: "):
                url = line.removeprefix("Web UI ready: ").strip()
            elif proc.poll() is not None and lines.empty():
                pytest.fail(f"lfwrap webui exited {proc.returncode}: {''.join(seen)}")
        assert url == f"http://127.0.0.1:{port}/"
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, "".join(seen)
    with pytest.raises(httpx.ConnectError):  # Ctrl-C stopped LLaMA Board too
        httpx.get(url, timeout=5)
    log = (lfwrap_home / "webui" / "webui.log").read_text(encoding="utf-8", errors="replace")
    assert f"Running on local URL:  http://127.0.0.1:{port}" in log


def _finished_cli_run(home: Path, name: str, model: str) -> None:
    """A succeeded run as `lfwrap train` leaves it: meta.json, config.yaml, output/ with the adapter."""
    import yaml

    from wrapper.launch import runs

    output = home / "runs" / name / "output"
    output.mkdir(parents=True)
    (output / "adapter_config.json").write_text("{}")
    (output / "adapter_model.safetensors").write_bytes(b"weights")
    config = {"model_name_or_path": model, "finetuning_type": "lora", "output_dir": str(output)}
    (output.parent / "config.yaml").write_text(yaml.safe_dump(config))
    runs.write_meta(output.parent, runs.RunMeta(name=name, output_dir=str(output), status="succeeded"))


def _dataset_choices(page: Page, wait_for: str) -> list[str]:
    """Open the Train tab's dataset selector and list its options once `wait_for` is among them.

    The Evaluate tab has a hidden selector with the same label, hence the visibility filter. The choices
    are filled by a server round trip after a stage change, so the wait is on the option, not a sleep.
    """
    page.get_by_label("Dataset", exact=True).filter(visible=True).click()
    expect(page.get_by_role("option", name=wait_for, exact=True)).to_be_visible(timeout=30_000)
    return [text.strip() for text in page.get_by_role("option").all_inner_texts()]


def _close_dropdown(page: Page) -> None:
    # Escape closes Gradio's dropdown a frame later; reading options before then sees the old list.
    page.keyboard.press("Escape")
    expect(page.get_by_role("option")).to_have_count(0, timeout=10_000)


def test_train_tab_lists_lfwrap_datasets(webui_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webui_train_datasets.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(webui_url, wait_until="load", timeout=60_000)
            train = page.get_by_role("tab", name="Train", exact=True)
            train.wait_for(timeout=60_000)
            train.click()
            # The data dir LLaMA Board reads is its default `data`, which lfwrap linked to its datasets.
            assert page.get_by_label("Data dir", exact=False).filter(visible=True).input_value() == "data"

            sft = _dataset_choices(page, wait_for="identity")
            page.screenshot(path=str(shot))
            # Supervised fine-tuning lists every non-ranking dataset; the preference set is for DPO/RM.
            assert sft == ["identity", "alpaca_demo", "sharegpt_demo", "kto_demo"]

            # The identity rows it previews are the ones `lfwrap data identity` filled in.
            page.get_by_role("option", name="identity", exact=True).click()
            _close_dropdown(page)
            page.get_by_role("button", name="Preview dataset").click()
            page.get_by_text("蟹堡王").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "webui_identity_preview.png"))
            page.get_by_role("button", name="Close").filter(visible=True).click()

            page.get_by_label("Stage", exact=True).filter(visible=True).click()
            page.get_by_role("option", name="DPO", exact=True).click()
            _close_dropdown(page)
            dpo = _dataset_choices(page, wait_for="dpo_demo")
            # Ranking stages list the preference set; the SFT-only sets are not offered for DPO.
            assert "dpo_demo" in dpo and "alpaca_demo" not in dpo, dpo

            # lfwrap's finished run is a checkpoint of its base model (saves/<model>/lora/<run> links to it).
            model = page.get_by_label("Model name", exact=True).filter(visible=True)
            model.click()
            page.keyboard.type("Qwen2.5-0.5B-Instruct")
            page.get_by_role("option", name="Qwen2.5-0.5B-Instruct", exact=True).click()
            _close_dropdown(page)
            page.get_by_label("Checkpoint path", exact=True).filter(visible=True).click()
            expect(page.get_by_role("option", name="conch", exact=True)).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "webui_cli_run_checkpoint.png"))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
