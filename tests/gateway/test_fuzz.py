"""Schema fuzzing: schemathesis draws requests (valid and invalid) for every operation in the gateway's
own OpenAPI document and sends them to a real gateway on 127.0.0.1 in front of the stand-in. Every answer
must be a defined status, every error OpenAI's error object, and no secret may come back. The model is
a `rag:` route, so every drawn chat request is grounded in the bundled index on its way. The fine-tuning
endpoints (files, jobs) are fuzzed on the same gateway with their own budget of examples."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import schemathesis
from gateway_standin import StandIn
from gateway_support import make_gateway, make_settings, new_key, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

UPSTREAM_KEY = "up-fuzz-51c0e2d9a7"
EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "300"))
# what the gateway answers on purpose; anything else (500 included) is a defect
FINE_TUNING_EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_FINE_TUNING_EXAMPLES", "150"))
FINE_TUNING_PREFIXES = ("/v1/files", "/v1/fine_tuning/")
FINE_TUNING_PATHS = {
    "/v1/files",
    "/v1/files/{file_id}",
    "/v1/files/{file_id}/content",
    "/v1/fine_tuning/jobs",
    "/v1/fine_tuning/jobs/{job_id}",
    "/v1/fine_tuning/jobs/{job_id}/cancel",
    "/v1/fine_tuning/jobs/{job_id}/events",
    "/v1/fine_tuning/jobs/{job_id}/checkpoints",
}
DEFINED = {200, 400, 401, 403, 404, 405, 408, 413, 414, 422, 429, 502, 503, 504}


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, dict]]:
    from wrapper.home import bundled_rag_docs_dir
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.store import LocalTarget, rag_dir

    tmp_path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:  # a home of its own: the module outlives a test's home
        patch.setenv("LFWRAP_HOME", str(tmp_path / "home"))
        index_paths(LocalTarget(rag_dir() / "krusty-docs"), "krusty-docs", [bundled_rag_docs_dir()])
        with serving(StandIn()) as up:
            routes = [
                {
                    "name": "conch",
                    "upstream": up.url,
                    "upstream_key": UPSTREAM_KEY,
                    "max_concurrency": 4,
                    "rag": {"index": "krusty-docs"},
                }
            ]
            fine_tuning = {  # its endpoints are on, fuzzed by the next test; a missing base model: no
                # job ever launches a training
                "files_max_bytes": 1 << 16,
                "base_models": [
                    {"name": "tiny-demo", "path": str(tmp_path / "no-model"), "template": "default"}
                ],
                "database": str(tmp_path / "ft" / "finetune.db"),
            }
            config = make_settings(routes, tmp_path, fine_tuning=fine_tuning)
            key = new_key(config)
            with serving(make_gateway(config)) as gateway:
                schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
                operations = [result.ok() for result in schema.get_all_operations()]
                assert {op.path for op in operations} >= {
                    "/v1/chat/completions",
                    "/v1/models",
                    "/readyz",
                    "/v1/rag/{index}/search",
                    *FINE_TUNING_PATHS,
                }
                tuning = [op for op in operations if op.path.startswith(FINE_TUNING_PREFIXES)]
                others = [op for op in operations if op not in tuning]
                yield gateway.url, key, up.url, {"others": others, "fine_tuning": tuning}


def _fuzz(url: str, key: str, upstream: str, operations: list, examples: int) -> dict[int, int]:
    strategy = st.one_of(
        [
            op.as_strategy(generation_mode=mode)
            for op in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
    )
    seen: dict[int, int] = {}

    @given(case=strategy, with_key=st.sampled_from([True] * 4 + [False]))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def one(case, with_key: bool) -> None:
        headers = {"Authorization": f"Bearer {key}"} if with_key else {}
        response = case.call(base_url=url, headers=headers, timeout=30)
        status = response.status_code
        seen[status] = seen.get(status, 0) + 1
        where = f"{case.method} {case.path} -> {status}: {response.text[:300]}"
        assert status in DEFINED, where
        assert UPSTREAM_KEY not in response.text and key not in response.text, where
        assert upstream.split("//")[1] not in response.text, where  # no upstream address
        if status >= 400:
            error = json.loads(response.text)["error"]
            assert set(error) == {"message", "type", "param", "code"}, where
            assert isinstance(error["message"], str) and error["message"], where

    one()
    print("fuzz statuses:", dict(sorted(seen.items())))
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if k >= 400) > 0, seen
    return seen


@pytest.mark.rag
def test_fuzz_every_operation_positive_and_negative(fuzzed_gateway):
    url, key, upstream, operations = fuzzed_gateway
    _fuzz(url, key, upstream, operations["others"], EXAMPLES)


@pytest.mark.rag
def test_fuzz_the_fine_tuning_operations(fuzzed_gateway):
    url, key, upstream, operations = fuzzed_gateway
    _fuzz(url, key, upstream, operations["fine_tuning"], FINE_TUNING_EXAMPLES)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/score/evaluation"])
def test_the_openapi_document_describes_the_proxied_endpoints(tmp_path, path):
    with serving(StandIn()) as up:
        config = make_settings([{"name": "conch", "upstream": up.url}], tmp_path, auth="open")
        with serving(make_gateway(config)) as gateway:
            import httpx

            document = httpx.get(gateway.url + "/openapi.json").json()
    operation = document["paths"][path]["post"]
    assert operation["requestBody"]["required"] is True
    assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"
    }


@pytest.mark.parametrize("role", [["user"], {"a": 1}, 7, None])
def test_a_role_that_is_not_a_string_is_a_400_not_a_crash(role):
    """Found by the fuzzing above: a list as `role` raised TypeError (a 500)."""
    from wrapper.gateway.checks import check_chat
    from wrapper.gateway.oai import ApiError

    with pytest.raises(ApiError) as info:
        check_chat({"model": "conch", "messages": [{"role": role, "content": "hi"}]})
    assert info.value.status == 400 and info.value.param == "messages"
