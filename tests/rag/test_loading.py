"""Reading documents and chunking them: formats, errors, budgets, overlap, stable ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrapper.errors import RagError
from wrapper.rag.chunking import chunk_parts
from wrapper.rag.loaders import Part, discover, load
from wrapper.rag.tokenize import estimate_tokens, get_tokenizer


def _load(path: Path) -> list[Part]:
    return load(discover([path]).files[0])


def test_jsonl_rows_are_documents_and_bad_rows_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one", "id": 7}\n\n{"text": "two", "title": "Second"}\n', encoding="utf-8")
    assert _load(path) == [Part("one", "row 7"), Part("two", "Second")]
    path.write_text('{"text": "one"}\n{"txt": "two"}\n', encoding="utf-8")
    with pytest.raises(RagError, match=r"d.jsonl:2: .*\"text\""):
        _load(path)
    path.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(RagError, match=r"d.jsonl:1: not JSON"):
        _load(path)


@pytest.mark.rag
def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(RagError, match="latin1.txt is not UTF-8"):
        _load(tmp_path / "latin1.txt")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    with pytest.raises(RagError, match="broken.pdf could not be read as a PDF"):
        _load(tmp_path / "broken.pdf")


def test_discovery_skips_hidden_and_unsupported_files(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\ntext", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "b.md").write_text("hidden", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.TXT").write_text("c", encoding="utf-8")
    (tmp_path / "d.png").write_bytes(b"\x89PNG")
    found = discover([tmp_path])
    assert [f.source for f in found.files] == ["a.md", "sub/c.TXT"]
    assert found.skipped == [str(tmp_path / "d.png")]


def test_chunks_follow_headings_keep_the_budget_and_overlap() -> None:
    para = " ".join(f"Sentence number {i} about kelp." for i in range(60))
    text = (
        f"# Guide\n\nShort intro.\n\n## Part one\n\n{para}\n\n### Deeper\n\nLast words.\n\n## 第二部分\n\n"
        + "海带。" * 200
    )
    chunks = chunk_parts("g.md", [Part(text)], size=80, overlap=20)
    titles = [c.title for c in chunks]
    assert titles[0] == "Guide" and chunks[0].text == "Short intro."
    assert "Guide › Part one › Deeper" in titles and titles[-1] == "Guide › 第二部分"
    assert all(estimate_tokens(c.text) <= 80 + 20 for c in chunks)
    part_one = [c for c in chunks if c.title == "Guide › Part one"]
    assert len(part_one) > 2
    for prev, nxt in zip(part_one, part_one[1:], strict=False):
        last_sentence = prev.text.rsplit(". ", 1)[-1]
        assert nxt.text.startswith(last_sentence[:10]) or last_sentence in nxt.text  # overlap carried over
    assert [c.id for c in chunks] == [f"g.md#{i}" for i in range(len(chunks))]
    assert chunk_parts("g.md", [Part(text)], size=80, overlap=20) == chunks  # deterministic
    no_overlap = chunk_parts("g.md", [Part(text)], size=80, overlap=0)
    assert sum(len(c.text) for c in no_overlap) < sum(len(c.text) for c in chunks)


def test_code_blocks_are_not_split_at_comments_or_blank_lines() -> None:
    code = "```bash\n# install\npip install x\n\n# run\nx --go\n```"
    text = f"# Setup\n\nRun this:\n\n{code}\n\n## Next\n\nDone."
    chunks = chunk_parts("s.md", [Part(text)], size=300, overlap=0)
    assert [c.title for c in chunks] == ["Setup", "Setup › Next"]
    assert code in chunks[0].text


@pytest.mark.rag
def test_jieba_segments_mixed_text_and_unicode_does_not() -> None:
    jieba, plain = get_tokenizer("jieba"), get_tokenizer("unicode")
    assert {"蟹黄", "价格", "krabby", "patty"} <= set(jieba("蟹黄堡的价格 Krabby Patty"))
    assert plain("蟹黄堡的价格 Krabby Patty") == ["蟹黄堡的价格", "krabby", "patty"]
    assert "，" not in jieba("你好，世界")
