"""Tests for gptforge.text.sources / download / gutenberg: Project Gutenberg books and URLs from a local
HTTP server (retries, caching, boilerplate), jsonl / parquet / hf: inputs against the same text as
.txt files. Nothing here touches the network beyond 127.0.0.1."""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from gptforge.data import load_corpus, prepare_corpus
from gptforge.errors import UserError
from gptforge.text import SourceOptions, gutenberg, open_sources, read_documents
from gptforge.tokenizer import gpt2

from helpers import EOT_ID, assert_user_error, run_cli_here

BODIES = {
    1342: "It is a truth universally acknowledged, that a single man in possession\n"
          "of a good fortune, must be in want of a wife.\n\nChapter 2\n\nMr. Bennet was among the earliest.\n",
    2701: "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having\n"
          "little or no money in my purse, I thought I would sail about a little.\n",
    84: "You will rejoice to hear that no disaster has accompanied the commencement\n"
        "of an enterprise which you have regarded with such evil forebodings.\n",
}


def modern_book(book_id: int) -> bytes:
    """Today's layout: BOM, CRLF line ends, *** START/END OF THE PROJECT GUTENBERG EBOOK markers,
    the full licence after the end marker (with its own '*** START: FULL LICENSE ***')."""
    text = ("\ufeffThe Project Gutenberg eBook of A Book\n\nThis ebook is for the use of anyone anywhere in the "
            "United States and\nmost other parts of the world at no cost.\n\nTitle: A Book\n\n"
            f"*** START OF THE PROJECT GUTENBERG EBOOK A BOOK ***\n\n\n{BODIES[book_id]}\n\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK A BOOK ***\n\n"
            "Updated editions will replace the previous one.\n*** START: FULL LICENSE ***\n"
            "THE FULL PROJECT GUTENBERG LICENSE\nSection 1. General Terms of Use\n")
    return text.replace("\n", "\r\n").encode("utf-8")


def old_book(book_id: int) -> bytes:
    """The 1990s layout: the small-print licence up to *END*THE SMALL PRINT!, and a footer line."""
    return ("The Project Gutenberg Etext of Moby Dick\n**Welcome To The World of Free Plain Vanilla "
            "Electronic Texts**\n*****These eBooks Were Prepared By Thousands of Volunteers!*****\n"
            "**START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\nWhy is this \"Small Print!\" "
            "statement here? You know: lawyers.\n"
            "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
            f"{BODIES[book_id]}\nEnd of The Project Gutenberg Etext of Moby Dick\n").encode("utf-8")


def this_book(book_id: int) -> bytes:
    """The 2000s layout: 'End of the Project Gutenberg EBook' before '*** END OF THIS ...'."""
    return ("Project Gutenberg's Frankenstein, by Mary Shelley\n\nThis eBook is for the use of anyone.\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK FRANKENSTEIN ***\n\n\n\n"
            f"Produced by Judith Boss\n\n\n\n\n{BODIES[book_id]}\n\n\n"
            "End of the Project Gutenberg EBook of Frankenstein, by Mary Shelley\n\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK FRANKENSTEIN ***\n\n***** This file should be named "
            "84-0.txt or 84-0.zip *****\n").encode("utf-8")


class Server:
    """A local HTTP server: each path has a list of responses, served in turn (the last repeats)."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes]]] = {}
        self.hits: Counter = Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.hits[self.path] += 1
                responses = owner.routes.get(self.path, [(404, b"not here")])
                status, body = responses[min(owner.hits[self.path], len(responses)) - 1]
                self.send_response(status)
                # status 299 stands for "200, but the connection drops half-way through the body"
                declared = len(body) * 2 if status == 299 else len(body)
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def options(server: Server, tmp_path: Path, **kw) -> SourceOptions:
    return SourceOptions(mirror=server.url, cache_dir=tmp_path / "cache", backoff=0.01, **kw)


def encode(text: str) -> list[int]:
    return gpt2().encoding.encode_ordinary(text)


def all_tokens(out: Path) -> list[int]:
    corpus = load_corpus(out)
    return np.asarray(corpus.train).tolist() + ([EOT_ID] if len(corpus.val) else []) + np.asarray(corpus.val).tolist()


# ---------------------------------------------------------------------------------------------
# Project Gutenberg


def test_boilerplate_is_stripped_from_every_layout():
    for make, book_id in [(modern_book, 1342), (old_book, 2701), (this_book, 84)]:
        text, found = gutenberg.strip_boilerplate(make(book_id).decode("utf-8"))
        expected = BODIES[book_id].strip() + "\n"
        if make is this_book:
            expected = "Produced by Judith Boss\n\n\n\n\n" + expected  # credits inside the markers stay
        assert found and text == expected, make.__name__
    assert gutenberg.strip_boilerplate("Just a text.\n") == ("Just a text.\n", False)


def test_gutenberg_books_download_once_strip_and_record_ids(server, tmp_path):
    server.routes = {"/cache/epub/1342/pg1342.txt": [(200, modern_book(1342))],
                     "/cache/epub/2701/pg2701.txt": [(200, old_book(2701))],
                     "/files/84/84-0.txt": [(200, this_book(84))]}  # only in the older layout
    opts = options(server, tmp_path)
    meta = prepare_corpus(["gutenberg:1342,2701", "gutenberg:84,1342"], tmp_path / "c", val_fraction=0.0,
                          progress=False, options=opts)
    assert meta["gutenberg_ids"] == [1342, 2701, 84]
    docs = [gutenberg.strip_boilerplate(make(i).decode())[0]
            for make, i in [(modern_book, 1342), (old_book, 2701), (this_book, 84)]]
    tokens = all_tokens(tmp_path / "c")
    assert tokens == encode(docs[0]) + [EOT_ID] + encode(docs[1]) + [EOT_ID] + encode(docs[2])
    text = gpt2().encoding.decode(tokens)
    for boilerplate in ("Gutenberg", "SMALL PRINT", "LICENSE", "\r", "\ufeff"):
        assert boilerplate not in text
    assert meta["sources"][2]["url"] == f"{server.url}/files/84/84-0.txt"
    assert len(meta["sources"][0]["sha256"]) == 64

    before = dict(server.hits)
    meta_again = prepare_corpus(["gutenberg:84"], tmp_path / "c2", val_fraction=0.0, progress=False, options=opts)
    assert dict(server.hits) == before  # served from the cache
    assert meta_again["sources"][0]["url"] == meta["sources"][2]["url"]


def test_server_errors_are_retried_then_reported(server, tmp_path):
    server.routes = {"/cache/epub/11/pg11.txt": [(500, b"busy"), (503, b"busy"), (200, modern_book(1342))],
                     "/cache/epub/12/pg12.txt": [(500, b"down")],
                     "/cache/epub/13/pg13.txt": [(299, modern_book(1342)), (200, modern_book(1342))]}
    docs = read_documents(["gutenberg:11"], options(server, tmp_path))
    assert docs[0][1] == BODIES[1342].strip() + "\n" and server.hits["/cache/epub/11/pg11.txt"] == 3
    read_documents(["gutenberg:13"], options(server, tmp_path))  # a body cut short is fetched again
    assert server.hits["/cache/epub/13/pg13.txt"] == 2

    with pytest.raises(UserError, match=r"cannot download .*pg12\.txt: HTTP 500 .*gave up after 4 attempts"):
        read_documents(["gutenberg:12"], options(server, tmp_path))
    assert server.hits["/cache/epub/12/pg12.txt"] == 4  # 1 + 3 retries, then no more
    with pytest.raises(UserError, match="gave up after 1 attempts"):
        read_documents(["gutenberg:12"], options(server, tmp_path, retries=0))
    assert not list((tmp_path / "cache" / "gutenberg").glob("pg12*"))  # nothing half-written in the cache

    with pytest.raises(UserError, match="book 99 was not found"):
        read_documents(["gutenberg:99"], options(server, tmp_path))
    assert server.hits["/cache/epub/99/pg99.txt"] == 1  # a 404 is not retried
    with pytest.raises(UserError, match="book ids separated by commas"):
        open_sources(["gutenberg:12,abc"])


def test_connection_refused_is_retried_then_reported(tmp_path):
    opts = SourceOptions(mirror="http://127.0.0.1:9", cache_dir=tmp_path, retries=1, backoff=0.01)
    with pytest.raises(UserError, match=r"cannot download .*refused.*gave up after 2 attempts"):
        read_documents(["gutenberg:1342"], opts)


def test_gutenberg_top_takes_the_popular_list(server, tmp_path):
    page = ('<h2 id="books-last1">Top 100 EBooks yesterday</h2><ol><li><a href="/ebooks/1342">Pride</a></li>'
            '<li><a href="/ebooks/84">Frankenstein</a></li></ol><h2>Top 100 Authors</h2><ol>'
            '<li><a href="/ebooks/author/68">Austen</a></li></ol><ol><li><a href="/ebooks/84">again</a></li>'
            '<li><a href="/ebooks/2701">Moby</a></li></ol>')
    server.routes = {"/browse/scores/top": [(200, page.encode())],
                     "/cache/epub/1342/pg1342.txt": [(200, modern_book(1342))],
                     "/cache/epub/84/pg84.txt": [(200, this_book(84))]}
    assert gutenberg.top_ids(3, server.url) == [1342, 84, 2701]
    meta = prepare_corpus([], tmp_path / "c", val_fraction=0.0, progress=False,
                          options=options(server, tmp_path, gutenberg_top=2))
    assert meta["gutenberg_ids"] == [1342, 84]


# ---------------------------------------------------------------------------------------------
# URLs


def test_url_input_is_downloaded_once_and_split_like_the_reference(server, tmp_path):
    story = "I HAD always thought Jack Gisburn rather a cheap genius.\n" * 40
    server.routes = {"/the-verdict.txt": [(502, b""), (200, story.encode())]}
    url = server.url + "/the-verdict.txt"
    meta = prepare_corpus([url], tmp_path / "c", progress=False, options=options(server, tmp_path))
    split_idx = int(0.9 * len(story))  # the reference recipe fetches its story this way, then splits
    corpus = load_corpus(tmp_path / "c")
    assert corpus.train.tolist() == encode(story[:split_idx]) and corpus.val.tolist() == encode(story[split_idx:])
    assert meta["sources"][0]["url"] == url and meta["split"] == "chars"
    prepare_corpus([url], tmp_path / "c2", progress=False, options=options(server, tmp_path))
    assert server.hits["/the-verdict.txt"] == 2  # one retry, then the cache


def test_cli_reports_a_server_error_in_one_line(server, tmp_path):
    server.routes = {"/story.txt": [(500, b"")]}
    result = run_cli_here("prepare", server.url + "/story.txt", "--out", str(tmp_path / "c"), "--retries", "1",
                     "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(result, "HTTP 500 Internal Server Error (gave up after 2 attempts)")
    assert server.hits["/story.txt"] == 2 and not (tmp_path / "c").exists()


def test_cli_prepares_gutenberg_books_with_the_new_flags(server, tmp_path):
    server.routes = {f"/cache/epub/{i}/pg{i}.txt": [(200, modern_book(i))] for i in BODIES}
    out = tmp_path / "c"
    result = run_cli_here("prepare", "gutenberg:1342,2701,84", "--out", str(out), "--mirror", server.url,
                     "--cache-dir", str(tmp_path / "cache"), "--workers", "2", "--shard-tokens", "20",
                     "--split", "documents", "--val-fraction", "0.3", "--seed", "4")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["gutenberg_ids"] == [1342, 2701, 84] and meta["seed"] == 4 and meta["documents"]["val"] == 1
    assert len(meta["shards"]["train"]) > 1 and "shard(s)" in result.stdout


# ---------------------------------------------------------------------------------------------
# jsonl, parquet, hf:

TEXTS = ["First document: plain prose.\n", "Second one \u2014 with caf\u00e9, \u65e5\u672c\u8a9e and \U0001F600.\n",
         "A literal <|endoftext|> inside user text stays text.\n", "   leading spaces and\ttabs\n\n\n",
         *[f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 7 + 1) for i in range(4, 16)]]


def write_inputs(tmp_path: Path) -> dict[str, list[str]]:
    """The same documents as .txt files, a .jsonl file and (with pyarrow) a .parquet file."""
    txt = tmp_path / "txt"
    txt.mkdir()
    for i, text in enumerate(TEXTS):
        (txt / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    rows = [{"id": i, "body": text, "meta": {"lang": "en"}} for i, text in enumerate(TEXTS)]
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row, ensure_ascii=i % 2 == 0) + "\n" + ("\n" if i == 3 else ""))
    inputs = {"txt": [str(txt)], "jsonl": [str(tmp_path / "docs.jsonl")]}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return inputs
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "body": TEXTS}), tmp_path / "docs.parquet",
                   row_group_size=5)
    inputs["parquet"] = [str(tmp_path / "docs.parquet")]
    return inputs


@pytest.mark.parametrize("split", ["documents", "chars"])
def test_jsonl_and_parquet_prepare_like_the_same_text_as_txt_files(tmp_path, split):
    inputs = write_inputs(tmp_path)
    opts = SourceOptions(text_field="body")
    results = {}
    for kind, paths in inputs.items():
        meta = prepare_corpus(paths, tmp_path / f"out-{kind}", val_fraction=0.2, split=split, seed=3,
                              workers=2, progress=False, options=opts)
        corpus = load_corpus(tmp_path / f"out-{kind}")
        results[kind] = (np.asarray(corpus.train).tolist(), np.asarray(corpus.val).tolist(), meta["documents"])
    assert "parquet" in results or "pyarrow" not in sys.modules
    for kind in results:
        assert results[kind] == results["txt"], kind
    assert len(results["txt"][1]) > 0


def test_jsonl_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2 has no 'text' field \(it has: body\); choose one with --text-field"):
        read_documents([str(bad)])
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2 is not valid JSON"):
        read_documents([str(bad)])
    bad.write_text('{"text": 12}\n')
    with pytest.raises(UserError, match="holds int, not text"):
        read_documents([str(bad)])


def test_parquet_without_the_column_is_a_user_error(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(UserError, match=r"no 'text' column \(it has: body\)"):
        read_documents([str(tmp_path / "d.parquet")])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="not a readable parquet file"):
        read_documents([str(tmp_path / "broken.parquet")])


def test_hf_dataset_streams_from_a_local_folder(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        for text in TEXTS:
            f.write(json.dumps({"text": text}) + "\n")
    spec = f"hf:{folder}"
    meta = prepare_corpus([spec], tmp_path / "all", val_fraction=0.0, progress=False)
    assert all_tokens(tmp_path / "all") == [t for i, text in enumerate(TEXTS)
                                           for t in ([EOT_ID] if i else []) + encode(text)]
    assert meta["sources"][0] == {"hf": str(folder), "config": None, "split": "train", "text_field": "text",
                                  "rows": len(TEXTS)}
    # A stream's length is unknown: each document validates with probability F, by the seed.
    a = prepare_corpus([spec], tmp_path / "a", val_fraction=0.3, seed=1, progress=False)
    b = prepare_corpus([spec], tmp_path / "b", val_fraction=0.3, seed=1, progress=False)
    assert a["split"] == "documents" and a["documents"] == b["documents"]
    assert all_tokens(tmp_path / "a") == all_tokens(tmp_path / "b")
    capped = prepare_corpus([spec], tmp_path / "cap", max_tokens=50, progress=False)
    assert sum(capped["tokens"].values()) == 50 and capped["truncated"]
    with pytest.raises(UserError, match="cannot open Hugging Face dataset"):
        prepare_corpus([spec], tmp_path / "bad", options=SourceOptions(hf_split="nope"), progress=False)
    with pytest.raises(UserError, match="no 'body' field"):
        prepare_corpus([spec], tmp_path / "bad", options=SourceOptions(text_field="body"), progress=False)


def test_hf_without_datasets_installed_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match=r"pip install 'gptforge\[datasets\]'"):
        open_sources(["hf:roneneldan/TinyStories"])


def test_deeply_nested_jsonl_is_one_line(tmp_path):
    bad = tmp_path / "deep.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ' + "[" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"deep\.jsonl:2 is nested too deeply"):
        read_documents([str(bad)])
