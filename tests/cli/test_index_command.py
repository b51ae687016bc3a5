"""`gptforge index add|search|list|stats` through the CLI's main, in-process."""

from __future__ import annotations

import re

from gptforge.cli import main

from helpers import write


def test_add_search_list_stats(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "docs" / "trees.md", "# Trees\n\nThe oak grows slowly.\nIts acorns feed jays.\n\n"
                                          "## Rivers\n\nA river runs by.\n")
    write(tmp_path / "docs" / "other.txt", "Stones and sand.\n")
    write(tmp_path / "docs" / "blob.txt", b"\0\1\2binary")
    assert main(["index", "add", "docs", "--index", "idx", "--chunk-tokens", "32", "--overlap", "4",
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "idx: 2 added, 0 updated, 0 removed, 0 unchanged, 1 skipped; 3 chunks written"
    assert err.strip() == f"skipped {(tmp_path / 'docs' / 'blob.txt').resolve()}: binary, not text"

    assert main(["index", "search", "idx", "oak acorns", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"  1 +\d+\.\d{3}  docs/trees\.md:1-4", lines[0])
    assert lines[1:4] == ["       # Trees", "       The oak grows slowly.", "       Its acorns feed jays."]
    assert len(lines) == 4  # one chunk holds the words

    assert main(["index", "list", "idx"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in listing[1:3]] == ["docs/other.txt", "docs/trees.md"]
    assert listing[-1] == "2 documents"

    assert main(["index", "stats", "idx"]) == 0
    stats = capsys.readouterr().out
    assert "documents     2 (" in stats and "chunks        3 (" in stats
    assert "chunk tokens  32 (overlap 4)" in stats and "tokenizer     gpt2" in stats


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "docs" / "a.txt", "oak\n")
    cases = [(["index", "search", "missing", "oak"], "no index at missing"),
             (["index", "add", "nope.txt", "--index", "idx"], "nope.txt: no such file or folder"),
             (["index", "list", "idx"], "no index at idx")]
    for argv, fragment in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert main(["index", "add", "docs", "--index", "idx", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", "add", "docs", "--index", "idx", "--overlap", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("gptforge: error: index idx was built with --overlap 32 (asked: 8): use its settings, or "
                    "build a new index in another folder")]
