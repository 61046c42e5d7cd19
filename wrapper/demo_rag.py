"""`python -m wrapper.demo_rag` (`make demo-rag`): fine-tuning and retrieval, both halves, on a CPU.

    1-3. the tiny model, the identity set, sft_lora training   (wrapper.demo's steps)
    4.   index the bundled Krusty Krab documents              (wrapper.rag, as `lfwrap rag index`)
    5.   serve the run with LLaMA-Factory's API server
    6.   the gateway in front of it, model "conch" with a `rag:` route on that index
    7.   "请问你是谁" without retrieval (x-lfwrap-rag: off): the identity comes from fine-tuning
    8.   a menu question with retrieval: the sources the gateway returns, and their text

The tiny demo model (2 layers, trained on 2 rows) cannot read a fact out of its context, so step 8 prints
the model's answer as it is next to the retrieved source and its text: the fact, with where it comes from,
is what retrieval adds; a real model answers from it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from wrapper.demo import (
    MODEL_NAME,
    NAME,
    QUESTION,
    prepare_identity_demo,
    run_steps,
    served,
    step_model,
    step_train,
)

INDEX = "krusty-docs"
MENU_QUESTION = "How much is a Krabby Patty?"
# the tiny model has 512 positions: a short context keeps the prompt within them
RAG = {"index": INDEX, "top_k": 2, "min_score": 0.0, "max_context_tokens": 160}


def step_index() -> str:
    from wrapper.home import bundled_rag_docs_dir
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.store import LocalTarget, rag_dir

    index_paths(LocalTarget(rag_dir() / INDEX), INDEX, [bundled_rag_docs_dir()])
    return INDEX


def ask(base_url: str, key: str, question: str, rag: bool) -> tuple[str, list[dict[str, Any]]]:
    """One greedy chat completion with the official openai client: the answer and its sources."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": question}],
        max_tokens=48,
        extra_body={"do_sample": False},
        extra_headers={} if rag else {"x-lfwrap-rag": "off"},
    )
    return reply.choices[0].message.content or "", (reply.model_extra or {}).get("sources", [])


def source_texts(base_url: str, key: str, question: str) -> dict[str, str]:
    """Chunk id -> text, from the gateway's POST /v1/rag/{index}/search."""
    import httpx

    answer = httpx.post(
        f"{base_url}/rag/{INDEX}/search",
        json={"query": question, "top_k": RAG["top_k"]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    answer.raise_for_status()
    return {hit["id"]: hit["text"] for hit in answer.json()["data"]}


def main() -> int:
    return run_steps(_steps)


def _steps() -> None:
    from wrapper.errors import LaunchError
    from wrapper.extras import require

    require("demo", "The demo", LaunchError)  # before minutes of training, not after
    require("rag", "The retrieval demo", LaunchError)
    print("1/8 building the tiny demo model ...", flush=True)
    model: Path = step_model()
    print(f"2/8 filling the identity set with {NAME} ...", flush=True)
    dataset = prepare_identity_demo()
    print("3/8 training sft_lora (LoRA, 150 epochs on the CPU) ...", flush=True)
    run_dir = step_train(model, dataset)
    print(f"4/8 indexing the bundled Krusty Krab documents as {INDEX!r} ...", flush=True)
    step_index()
    print("5/8 starting LLaMA-Factory's API server ...", flush=True)

    def on_served(url: str) -> None:
        print(f"6/8 starting the gateway: model {MODEL_NAME!r} grounded in {INDEX!r} ...", flush=True)

    with served(run_dir, "demo-rag", on_served, rag=RAG) as (base_url, key):
        print(f"7/8 fine-tuning: {QUESTION} (retrieval off)", flush=True)
        identity, _ = ask(base_url, key, QUESTION, rag=False)
        print(f"    Answer: {identity}", flush=True)
        print(f"8/8 retrieval: {MENU_QUESTION}", flush=True)
        answer, sources = ask(base_url, key, MENU_QUESTION, rag=True)
        texts = source_texts(base_url, key, MENU_QUESTION)
    print(f"    Model's answer (the tiny model cannot use its context; a real one would): {answer}")
    if not sources:
        print("    No source was retrieved.")
    for source in sources:
        print(f"    Source [{source['id']}] ({source['source']}, score {source['score']}):")
        for line in texts.get(str(source["id"]), "").splitlines():
            print(f"      {line}")


if __name__ == "__main__":
    sys.exit(main())
