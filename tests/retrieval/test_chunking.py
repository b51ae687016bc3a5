"""Chunking keeps every character once (outside the overlaps) and knows each chunk's lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptforge.errors import UserError
from gptforge.retrieval.chunking import ChunkSettings, chunk_text
from gptforge.tokenizer import gpt2

WORDS = ["oak", "apple", "été", "中文", "🙂", "x" * 40, "the", "1234", "a-b", "<|endoftext|>", "\t"]
LINES = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=60).map(" ".join),  # up to a long line
    st.sampled_from(["", "", "   ", "# Heading", "## Sub heading", "```", "#not a heading"]),
    st.text(max_size=30),  # anything, control characters included
)
DOCUMENTS = st.lists(LINES, max_size=40).map("\n".join)


def line_of(text: str, offset: int) -> int:
    """The 1-based line of a character, counted independently: by the lines' lengths."""
    seen = 0
    for number, line in enumerate(text.split("\n"), 1):
        seen += len(line) + 1
        if offset < seen:
            return number
    raise AssertionError(offset)


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS, st.integers(8, 40), st.data(), st.booleans())
def test_every_character_once_outside_overlaps_and_the_right_lines(text, size, data, markdown):
    overlap = data.draw(st.integers(0, size // 2))
    chunks = chunk_text(text, gpt2(), ChunkSettings(size, overlap), markdown=markdown)
    if not text.strip():
        assert chunks == []
        return
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    rebuilt, end = "", 0
    for chunk in chunks:
        assert chunk.text == text[chunk.start:chunk.end] and chunk.start < chunk.end
        assert chunk.start <= end and chunk.end > end  # no gap; each chunk adds something new
        rebuilt += text[end:chunk.end]
        end = chunk.end
        body = [i for i in range(chunk.start, chunk.end) if not text[i].isspace()] or [chunk.start, chunk.end - 1]
        assert (chunk.line_start, chunk.line_end) == (line_of(text, body[0]), line_of(text, body[-1]))
        assert chunk.tokens == len(gpt2().encode(chunk.text))
    assert rebuilt == text


def test_paragraphs_are_packed_and_headings_start_chunks():
    text = "# One\n\nalpha beta.\n\ngamma delta.\n\n## Two\n\nepsilon.\n"
    chunks = chunk_text(text, gpt2(), ChunkSettings(64, 8), markdown=True)
    assert [c.text for c in chunks] == ["# One\n\nalpha beta.\n\ngamma delta.\n\n", "## Two\n\nepsilon.\n"]
    assert [(c.line_start, c.line_end) for c in chunks] == [(1, 5), (7, 9)]
    # as plain text the heading is just a paragraph: all of it fits one chunk
    assert len(chunk_text(text, gpt2(), ChunkSettings(64, 8))) == 1


def test_a_long_paragraph_becomes_overlapping_windows_of_the_set_length():
    text = " ".join(f"word{i}" for i in range(300))  # one paragraph, ~600 tokens
    chunks = chunk_text(text, gpt2(), ChunkSettings(100, 20))
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        shared = a.end - b.start
        assert shared > 0 and len(gpt2().encode(text[b.start:a.end])) in range(18, 23)  # ~20 tokens shared
    assert all(c.tokens <= 102 for c in chunks)


@pytest.mark.parametrize("size, overlap", [(4, 0), (64, 40), (64, -1)])
def test_bad_settings_are_one_line(size, overlap):
    with pytest.raises(UserError, match="--chunk-tokens|--overlap"):
        ChunkSettings(size, overlap).check()
