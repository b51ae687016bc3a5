"""The index: incremental adds equal a rebuild, bad files are skipped with one line, settings stay
the index's own, and a kill -9 mid-add leaves the previous index."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from gptforge.errors import UserError
from gptforge.retrieval import add_paths, index_stats, list_documents, search
from gptforge.retrieval.index import index_file

from helpers import write


def content(folder) -> tuple:
    """Everything an index holds, by path (row ids may differ), after SQLite's and FTS5's own checks."""
    db = sqlite3.connect(index_file(folder))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")  # raises if FTS is out of step
    documents = db.execute("SELECT path, kind, sha256, size FROM documents ORDER BY path").fetchall()
    chunks = db.execute("SELECT d.path, c.ordinal, c.line_start, c.line_end, c.char_start, c.char_end, c.text, "
                        "c.tokens FROM chunks c JOIN documents d ON d.id = c.doc_id ORDER BY d.path, c.ordinal").fetchall()
    db.close()
    hits = [[(h.path, h.line_start, round(h.score, 9)) for h in search(folder, q, k=50)]
            for q in ("oak", "red apples", "river stone")]
    return documents, chunks, hits


def corpus(folder):
    write(folder / "a.md", "# Trees\n\nThe oak grows slowly.\n\n## Fruit\n\nRed apples fall.\n")
    write(folder / "b.txt", "A river stone.\n\nThe oak by the river.\n")
    write(folder / "sub" / "c.txt", "Red apples and pears.\n" * 40)
    write(folder / "d.jsonl", '{"text": "stone walls"}\n{"text": "an oak door"}\n')
    write(folder / "e.txt", "nothing here about those\n")


def test_incremental_updates_equal_a_rebuild(tmp_path):
    docs = tmp_path / "docs"
    corpus(docs)
    first = add_paths(tmp_path / "index", [docs], chunk_tokens=32, overlap=8, progress=False)
    assert (first.added, first.chunks) == (5, index_stats(tmp_path / "index")["chunks"])
    # one file changed, one removed, one added, the rest unchanged
    write(docs / "b.txt", "A river stone, moved.\n\nThe oak by the river, gone.\n")
    (docs / "sub" / "c.txt").unlink()
    write(docs / "f.html", "<p>An <b>oak</b> table.</p>")
    report = add_paths(tmp_path / "index", [docs], progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 3)
    add_paths(tmp_path / "rebuilt", [docs], chunk_tokens=32, overlap=8, progress=False)
    updated, rebuilt = content(tmp_path / "index"), content(tmp_path / "rebuilt")
    assert updated == rebuilt
    assert str(docs / "sub" / "c.txt") not in [row[0] for row in updated[0]]
    # nothing changed: nothing written
    again = add_paths(tmp_path / "index", [docs], progress=False)
    assert (again.unchanged, again.chunks) == (5, 0) and content(tmp_path / "index") == rebuilt


def test_a_file_named_alone_is_not_a_folder_to_prune(tmp_path):
    docs = tmp_path / "docs"
    corpus(docs)
    add_paths(tmp_path / "index", [docs], progress=False)
    add_paths(tmp_path / "index", [docs / "a.md"], progress=False)  # the others stay
    assert len(list_documents(tmp_path / "index")) == 5


def test_binary_and_unreadable_files_are_skipped_one_line_each(tmp_path):
    docs = tmp_path / "docs"
    corpus(docs)
    write(docs / "blob.txt", bytes(range(256)) * 4)
    write(docs / "latin1.txt", "caf\xe9".encode("latin-1"))
    write(docs / "bad.jsonl", '{"text": "fine"}\n{"body": "no text"}\n')
    lines = []
    report = add_paths(tmp_path / "index", [docs], progress=False, warn=lines.append)
    assert report.added == 5 and len(report.skipped) == 3
    assert sorted(lines) == sorted([f"skipped {docs / 'bad.jsonl'}: line 2: no text field 'text'",
                                    f"skipped {docs / 'blob.txt'}: binary, not text",
                                    f"skipped {docs / 'latin1.txt'}: not UTF-8 text (byte 3)"])


def test_missing_index_missing_path_and_other_settings_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no index at"):
        search(tmp_path / "nowhere", "oak")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    sqlite3.connect(index_file(tmp_path / "empty")).close()  # what a first add killed before its commit leaves
    with pytest.raises(UserError, match="is empty"):
        list_documents(tmp_path / "empty")
    with pytest.raises(UserError, match="no such file or folder"):
        add_paths(tmp_path / "index", [tmp_path / "absent.txt"], progress=False)
    assert not index_file(tmp_path / "index").exists()
    docs = tmp_path / "docs"
    corpus(docs)
    add_paths(tmp_path / "index", [docs], chunk_tokens=32, overlap=8, progress=False)
    before = content(tmp_path / "index")
    with pytest.raises(UserError, match=r"built with --chunk-tokens 32 \(asked: 64\)"):
        add_paths(tmp_path / "index", [docs], chunk_tokens=64, progress=False)
    with pytest.raises(UserError, match="tokenizer gpt2 "):
        add_paths(tmp_path / "index", [docs], tokenizer=_other_tokenizer(), progress=False)
    with pytest.raises(UserError, match="no words"):
        search(tmp_path / "index", "!?")
    assert content(tmp_path / "index") == before


def _other_tokenizer():
    from gptforge.tokenizer import gpt2

    return gpt2().with_special_tokens(["<|im_start|>"])


def test_lines_point_into_the_file_for_every_reader(tmp_path):
    write(tmp_path / "d" / "page.html", "<html>\n<head><title>T</title>\n<script>var oak;</script></head>\n"
                                        "<body>\n<p>first</p>\n\n<p>the\n  oak tree</p>\n</body></html>\n")
    write(tmp_path / "d" / "rows.jsonl", '{"text": "pine cone and pine needle"}\n\n{"text": "two\\nlines of oak"}\n')
    add_paths(tmp_path / "index", [tmp_path / "d"], chunk_tokens=8, overlap=0, progress=False)
    where = {h.path.rsplit("/", 1)[1]: (h.line_start, h.line_end, h.text) for h in search(tmp_path / "index", "oak")}
    assert where["rows.jsonl"] == (3, 3, "two\nlines of oak")
    # the text is "T\nfirst\nthe oak tree", from lines 2, 5 and 7 (where "the" is)
    assert where["page.html"] == (2, 7, "T\nfirst\nthe oak tree\n")


FILES = 300


@pytest.mark.slow
def test_kill_9_during_add_leaves_the_previous_index(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    corpus(small)
    for i in range(FILES):
        write(big / f"{i:04d}.txt", f"document {i} about oak and river stones.\n\n" * 300)
    add_paths(tmp_path / "index", [small], progress=False)
    before = content(tmp_path / "index")
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "index", "add", str(big), "--index",
                             str(tmp_path / "index")], stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "80"})
    seen, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:  # until the bar shows a few files done, well short of all
        seen += os.read(proc.stderr.fileno(), 4096)
        done = [int(n) for n in re.findall(rb"\| *(\d+)/%d" % FILES, seen)]
        if done and 3 <= max(done) < FILES // 2:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done and max(done) < FILES, seen[-300:]
    assert content(tmp_path / "index") == before  # usable, consistent, unchanged
    report = add_paths(tmp_path / "index", [big], progress=False)  # and it takes the next add
    assert report.added == FILES and index_stats(tmp_path / "index")["documents"] == FILES + 5


def test_an_index_keeps_its_own_tokenizer(tmp_path, tiny_bpe, tiny_bpe_dir):
    from gptforge.tokenizer import gpt2

    docs = tmp_path / "docs"
    corpus(docs)
    add_paths(tmp_path / "index", [docs / "a.md"], chunk_tokens=16, overlap=4, tokenizer=str(tiny_bpe_dir),
              progress=False)
    add_paths(tmp_path / "index", [docs], progress=False)  # no tokenizer named: the index's own
    assert index_stats(tmp_path / "index")["tokenizer"] == tiny_bpe.name
    db = sqlite3.connect(index_file(tmp_path / "index"))
    chunks = db.execute("SELECT text, tokens FROM chunks").fetchall()
    db.close()
    assert len(chunks) > 5 and all(n == len(tiny_bpe.encode(text)) for text, n in chunks)
    assert any(n != len(gpt2().encode(text)) for text, n in chunks)
    with pytest.raises(UserError, match=f"tokenizer {tiny_bpe.name} \\(asked: gpt2\\)"):
        add_paths(tmp_path / "index", [docs], tokenizer="gpt2", progress=False)
