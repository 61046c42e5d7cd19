"""Gateway settings: YAML, then LFWRAP_* environment, then flags; unknown keys and placeholders refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wrapper.gateway.limiter import Limiter, QueueFull, QueueTimeout
from wrapper.gateway.ratelimit import RateLimiter
from wrapper.gateway.settings import SettingsError, load_settings

YAML = """\
port: 9001
models:
  - name: conch
    upstream: http://127.0.0.1:8000/v1/
    max_concurrency: 2
"""


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "gateway.yaml"
    config.write_text(YAML)
    settings = load_settings(config)
    assert settings.port == 9001 and settings.host == "127.0.0.1" and settings.auth == "keys"
    route = settings.models[0]
    assert (route.name, route.upstream, route.max_concurrency, route.max_queue) == (
        "conch",
        "http://127.0.0.1:8000",
        2,
        32,
    )
    monkeypatch.setenv("LFWRAP_PORT", "9002")
    assert load_settings(config).port == 9002
    assert load_settings(config, port=9003).port == 9003
    monkeypatch.setenv("LFWRAP_MODELS", '[{"name": "krabs", "upstream": "http://10.0.0.2:8000"}]')
    assert [r.name for r in load_settings(config).models] == ["krabs"]


def test_unknown_keys_get_did_you_mean(tmp_path: Path):
    config = tmp_path / "gateway.yaml"
    config.write_text(YAML.replace("max_concurrency", "max_concurency") + "prot: 1\n")
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    messages = [p.message for p in info.value.problems]
    assert "models.0.max_concurency: unknown key (did you mean 'max_concurrency'?)" in messages
    assert "prot: unknown key (did you mean 'port'?)" in messages
    assert all(p.file == str(config) for p in info.value.problems)


@pytest.mark.parametrize("secret", ["changeme", "your-api-key", "sk-xxxxxxxx", "<API_KEY>", ""])
def test_placeholder_upstream_keys_are_refused(tmp_path: Path, secret: str):
    config = tmp_path / "gateway.yaml"
    config.write_text(YAML + f"    upstream_key: '{secret}'\n")
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert any("placeholder" in p.message for p in info.value.problems)


def test_bad_yaml_bad_url_and_duplicates(tmp_path: Path):
    config = tmp_path / "gateway.yaml"
    config.write_text("models: [\n")
    with pytest.raises(SettingsError, match=r"gateway.yaml:\d+: not valid YAML"):
        load_settings(config)
    config.write_text("models:\n  - {name: a, upstream: 'ftp://x'}\n  - {name: a, upstream: 'http://x'}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    text = " ".join(p.message for p in info.value.problems)
    assert "http:// or https://" in text
    config.write_text("models:\n  - {name: a, upstream: 'http://x'}\n  - {name: a, upstream: 'http://y'}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert "repeated: a" in info.value.problems[0].message


def test_limiter_is_fifo_bounded_and_times_out():
    async def scenario() -> list[str]:
        limiter = Limiter(max_concurrency=1, max_queue=2)
        order: list[str] = []
        await limiter.acquire(1)

        async def waiter(tag: str) -> None:
            await limiter.acquire(5)
            order.append(tag)
            limiter.release()

        tasks = [asyncio.ensure_future(waiter(t)) for t in ("a", "b")]
        await asyncio.sleep(0.01)
        assert limiter.queued == 2
        with pytest.raises(QueueFull):
            await limiter.acquire(1)
        limiter.release()
        await asyncio.gather(*tasks)
        assert limiter.in_flight == 0 and limiter.queued == 0
        await limiter.acquire(1)
        with pytest.raises(QueueTimeout):
            await limiter.acquire(0.05)
        assert limiter.queued == 0
        cancelled = asyncio.ensure_future(limiter.acquire(5))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        assert limiter.queued == 0
        limiter.release()
        assert limiter.in_flight == 0
        return order

    assert asyncio.run(scenario()) == ["a", "b"]


def test_rate_limiter_window():
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.hit("k", 2) == 0 and limiter.hit("k", 2) == 0
    assert limiter.hit("k", 2) == pytest.approx(60.0)
    assert limiter.hit("other", 2) == 0
    now[0] += 30
    assert limiter.hit("k", 2) == pytest.approx(30.0)
    now[0] += 30
    assert limiter.hit("k", 2) == 0
