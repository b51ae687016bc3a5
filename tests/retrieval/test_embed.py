"""Embedders and vector search: mean pooling checked against the model's own forward pass, one
row at a time; vectors stored per chunk and kept in step by incremental adds; another embedder
refused; the vector scan against a full sort; reciprocal rank fusion by hand."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from gptforge.errors import UserError
from gptforge.retrieval import add_paths, search
from gptforge.retrieval.embed import ModelEmbedder, load_embedder
from gptforge.retrieval.search import fuse, nearest

from helpers import assert_user_error, random_gpt, run_cli_here, write

TEXTS = ["To reset the pump, hold the red lever.", "The boat is green and sleeps four.", "Hi"]


@pytest.fixture(scope="module")
def model():
    return random_gpt(2, context_length=64, vocab_size=50257).eval()  # GPT-2's vocabulary: tokenizer_of is gpt2()


def reference(model, text: str) -> np.ndarray:
    """One text alone through the model's full forward pass: the final norm's output (caught by a
    hook), averaged over the tokens, scaled to length 1."""
    from gptforge.tokenizer import tokenizer_of

    caught = []
    handle = model.final_norm.register_forward_hook(lambda m, a, out: caught.append(out))
    try:
        with torch.no_grad():
            model(torch.tensor([tokenizer_of(model).encode(text)]))
    finally:
        handle.remove()
    mean = caught[0][0].mean(0).numpy()
    return mean / np.linalg.norm(mean)


def test_mean_pooling_leaves_the_padding_out(model):
    got = ModelEmbedder(model, "m").embed(TEXTS)  # one padded batch: the texts differ in length
    assert got.shape == (3, model.config.emb_dim) and got.dtype == np.float32
    for row, text in zip(got, TEXTS):
        np.testing.assert_allclose(row, reference(model, text), atol=1e-5)


@pytest.fixture
def docs(tmp_path):
    write(tmp_path / "docs" / "pump.md", "# Pump\n\nTo reset the pump, hold the red lever.\n")
    write(tmp_path / "docs" / "boat.txt", "The boat is green and sleeps four.\n")
    write(tmp_path / "docs" / "tea.txt", "Tea is brewed for four minutes.\n")
    return tmp_path / "docs"


def stored(index) -> dict[str, np.ndarray]:
    db = sqlite3.connect(index / "index.sqlite")
    rows = db.execute("SELECT c.text, v.vector FROM chunks c JOIN vectors v ON v.chunk_id = c.id").fetchall()
    total = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
    db.close()
    assert len(rows) == total  # every chunk has its vector
    return {text: np.frombuffer(blob, np.float32) for text, blob in rows}


def test_every_chunk_gets_its_vector_and_adds_keep_them_in_step(model, docs, tmp_path):
    embedder = ModelEmbedder(model, "m")
    report = add_paths(tmp_path / "index", [docs], progress=False, embedder=embedder)
    assert report.vectors == report.chunks == 3
    vectors = stored(tmp_path / "index")
    for text, vector in vectors.items():
        np.testing.assert_allclose(vector, embedder.embed([text])[0], atol=1e-6)
    write(docs / "boat.txt", "The boat is red now.\n")
    (docs / "tea.txt").unlink()
    report = add_paths(tmp_path / "index", [docs], progress=False, embedder=embedder)
    assert (report.updated, report.removed, report.vectors) == (1, 1, 1)
    assert sorted(stored(tmp_path / "index")) == sorted(["# Pump\n\nTo reset the pump, hold the red lever.\n",
                                                         "The boat is red now.\n"])


def test_another_embedder_is_refused_in_one_line(model, docs, tmp_path):
    add_paths(tmp_path / "index", [docs], progress=False, embedder=ModelEmbedder(model, "first"))
    with pytest.raises(UserError, match="was built with the embedder model first, not model second"):
        add_paths(tmp_path / "index", [docs], progress=False, embedder=ModelEmbedder(model, "second"))
    assert len(stored(tmp_path / "index")) == 3  # nothing changed


def test_the_cli_stores_vectors_and_refuses_another_embedder(docs, tmp_path, tiny_checkpoint, chat_checkpoint):
    result = run_cli_here("index", "add", str(docs), "--index", str(tmp_path / "i"), "--embedder",
                          str(tiny_checkpoint), "--no-progress")
    assert result.returncode == 0 and "3 embedded" in result.stdout, result.stderr
    assert "vectors" in run_cli_here("index", "stats", str(tmp_path / "i")).stdout
    assert_user_error(run_cli_here("index", "add", str(docs), "--index", str(tmp_path / "i"), "--embedder",
                                   str(chat_checkpoint), "--no-progress"), "was built with the embedder model")
    write(docs / "new.txt", "A new note about the pump.\n")
    result = run_cli_here("index", "add", str(docs), "--index", str(tmp_path / "i"), "--no-progress")
    assert "1 embedded" in result.stdout  # the index's own embedder, without naming it again
    hits = run_cli_here("index", "search", str(tmp_path / "i"), "pump", "--mode", "vector", "-k", "4").stdout
    assert len([line for line in hits.splitlines() if not line.startswith("       ")]) == 4


def test_a_vector_search_finds_the_chunk_of_the_same_text(model, docs, tmp_path):
    embedder = ModelEmbedder(model, "m")
    add_paths(tmp_path / "index", [docs], progress=False, embedder=embedder)
    for text in ("The boat is green and sleeps four.\n", "Tea is brewed for four minutes.\n"):
        (best, *_) = search(tmp_path / "index", text, 3, embedder, "vector")
        assert best.text == text and best.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="needs an index with an embedder"):
        search(tmp_path / "index", "pump", 3, None, "vector")


def test_the_scan_in_blocks_keeps_the_best():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE vectors (chunk_id INTEGER PRIMARY KEY, vector BLOB)")
    db.executemany("INSERT INTO vectors VALUES (?, ?)", [(i + 1, v.tobytes()) for i, v in enumerate(vectors)])
    query = rng.standard_normal(8).astype(np.float32)
    got = nearest(db, query, 5, block=7)
    order = np.argsort(-(vectors @ query))[:5]
    assert [c for _, c in got] == [int(i) + 1 for i in order]
    np.testing.assert_allclose([s for s, _ in got], (vectors @ query)[order], rtol=1e-6)


def test_reciprocal_rank_fusion_by_hand():
    # chunk 2: 1/61 + 1/62; chunk 1: 1/62 + 1/61 (a tie, broken by id); chunk 3: 1/63; chunk 9: 1/63
    assert fuse([[2, 1, 3], [1, 2, 9]], 3) == [(1 / 61 + 1 / 62, 1), (1 / 61 + 1 / 62, 2), (1 / 63, 3)]
    assert fuse([[], [5, 4]], 5) == [(1 / 61, 5), (1 / 62, 4)]


def test_a_missing_embedder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_embedder(str(tmp_path / "nothing"))


@pytest.mark.skipif(__import__("importlib").util.find_spec("sentence_transformers") is not None,
                    reason="sentence-transformers is installed")
def test_sentence_transformers_without_the_package_is_one_line(tmp_path):
    with pytest.raises(UserError, match="pip install sentence-transformers"):
        load_embedder(f"st:{tmp_path}")


def test_chunks_longer_than_the_models_context_are_said_once(docs, tmp_path):
    lines = []
    short = ModelEmbedder(random_gpt(2, context_length=8, vocab_size=50257).eval(), "short")
    add_paths(tmp_path / "index", [docs], progress=False, embedder=short, warn=lines.append)
    # the three chunks: 15, 9 and 8 GPT-2 tokens
    assert lines == ["2 chunks were longer than the embedder's context: each vector is of its first 8 tokens "
                     "(a smaller --chunk-tokens avoids it)"]


def test_an_embedder_whose_vectors_changed_size_is_refused(model, docs, tmp_path):
    add_paths(tmp_path / "index", [docs], progress=False, embedder=ModelEmbedder(model, "m"))
    wider = ModelEmbedder(random_gpt(2, context_length=64, vocab_size=50257, emb_dim=32).eval(), "m")
    write(docs / "new.txt", "A new note.\n")
    with pytest.raises(UserError, match="1 vectors of 32 dimensions for 1 chunks \\(the index's vectors have 64\\)"):
        add_paths(tmp_path / "index", [docs], progress=False, embedder=wider)
    assert len(stored(tmp_path / "index")) == 3  # the add was rolled back
