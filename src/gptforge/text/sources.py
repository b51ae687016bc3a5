"""What an INPUT names, read as a stream of documents.

An INPUT is a text file, a folder (every *.txt below it), a glob, `builtin:NAME`,
`gutenberg:ID,ID,...`, an `http(s)://` URL (downloaded once into the cache), `hf:NAME[:CONFIG]`
(a Hugging Face dataset, streamed), or a `.jsonl` / `.parquet` file (one document per row, its
text in the `text_field` column). A document arrives as a sequence of text blocks, so a large
file is never one string in memory. Each source also fills a record for meta.json (path or URL,
size, sha256, ...) as it is read.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import lzma
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from ..files import parse_json
from .download import default_cache_dir, fetch, url_cache_name
from .gutenberg import DEFAULT_MIRROR, fetch_book, parse_ids, strip_boilerplate, top_ids
from .gutenberg import PREFIX as GUTENBERG_PREFIX

BUILTIN_PREFIX = "builtin:"
BUILTIN_CORPORA = {"shakespeare": "shakespeare.json.xz"}
HF_PREFIX = "hf:"
READ_BYTES = 1 << 20  # a text file is read and decoded 1 MiB at a time
_FFFD = "\ufffd".encode()


@dataclass
class SourceOptions:
    """How the non-file inputs are read; the defaults suit the common case."""

    text_field: str = "text"
    """Column holding the text in .jsonl / .parquet files and hf: datasets."""
    hf_split: str = "train"
    """Split of an hf: dataset to read."""
    cache_dir: Path | None = None
    """Where downloads are kept (default: $XDG_CACHE_HOME/gptforge or ~/.cache/gptforge)."""
    mirror: str = DEFAULT_MIRROR
    """Project Gutenberg site or mirror that gutenberg: books (and the popular list) come from."""
    retries: int = 3
    """Retries of a download after a server error or a dropped connection."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one."""
    gutenberg_top: int = 0
    """Also read the first N books of Project Gutenberg's popular list."""

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


@dataclass
class Document:
    name: str
    blocks: Iterable[str]  # the text, in order; consumed once


class Source:
    """The documents of one input. `count` is their number when known without reading them
    (None for a stream), `size` the input's bytes when known (for progress)."""

    count: int | None = 1
    size: int | None = None

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError

    def identity(self) -> Any:
        """What an interrupted prepare must find unchanged to resume (JSON-serialisable)."""
        return self.record.get("path")


def decode_text(data: bytes, name: str) -> tuple[str, int]:
    """Decode bytes as UTF-8, replacing invalid sequences; return (text, number replaced)."""
    _refuse_binary(data, name)
    text = data.decode("utf-8", errors="replace")
    # Every U+FFFD in the text is either a replacement or a genuine, valid U+FFFD (bytes EF BF BD)
    # from the file; a valid sequence is never swallowed by a preceding invalid one, because
    # UTF-8 is self-synchronizing, so the difference counts the replacements exactly.
    return text, text.count("\ufffd") - data.count(_FFFD)


def _refuse_binary(data: bytes, name: str) -> None:
    if b"\x00" in data:
        # Text never contains NUL; this is an image, a model file, UTF-16 text, ...
        raise UserError(f"{name} looks like a binary file (it contains NUL bytes); give UTF-8 text files")


def warn_replaced(sources: list[Source]) -> None:
    """Say which inputs had invalid UTF-8 (each source counts its replacements as it is read)."""
    for source in sources:
        if source.record.get("replaced"):
            name = source.record.get("url") or source.record.get("path")
            print(f"warning: {name}: replaced {source.record['replaced']} invalid UTF-8 sequence(s) "
                  "with U+FFFD", file=sys.stderr)


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def _stat_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


class TextFile(Source):
    """A UTF-8 text file: one document, read in blocks (invalid bytes replaced and counted)."""

    def __init__(self, path: Path, **record: Any):
        super().__init__()
        self.path, self.size = path, _stat_size(path)
        self.record = {"path": str(path), **record, "bytes": self.size}

    def identity(self) -> Any:
        stat = self.path.stat()
        return [str(self.path), stat.st_size, stat.st_mtime_ns]

    def documents(self) -> Iterator[Document]:
        yield Document(str(self.path), self._blocks())

    def _blocks(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        digest, size, replaced, tail = hashlib.sha256(), 0, 0, b""
        with _open(self.path) as f:
            while True:
                block = f.read(READ_BYTES)
                _refuse_binary(block, str(self.path))
                text = decoder.decode(block, final=not block)
                # As in decode_text; a valid EF BF BD may also straddle two blocks, so the seam
                # (the previous block's last two bytes, this one's first two) is searched too.
                replaced += text.count("\ufffd") - block.count(_FFFD) - (tail + block[:2]).count(_FFFD)
                digest.update(block)
                size, tail = size + len(block), block[-2:]
                if text:
                    yield text
                if not block:
                    break
        self.record.update(bytes=size, sha256=digest.hexdigest(), replaced=replaced)


class GutenbergBook(TextFile):
    """A Project Gutenberg book from the download cache, without its header, footer and licence."""

    def __init__(self, book_id: int, options: SourceOptions):
        path, url = fetch_book(book_id, options.cache, options.mirror, options.retries,
                                         options.backoff)
        super().__init__(path, gutenberg_id=book_id, url=url)
        self.book_id = book_id

    def documents(self) -> Iterator[Document]:
        with _open(self.path) as f:
            data = f.read()
        text, replaced = decode_text(data, f"Project Gutenberg book {self.book_id} ({self.path})")
        text, found = strip_boilerplate(text)
        if not found and "stripped" not in self.record:  # once, though a chars split reads it twice
            print(f"warning: Project Gutenberg book {self.book_id} has no START/END markers; "
                  "kept the whole text", file=sys.stderr)
        self.record.update(sha256=hashlib.sha256(data).hexdigest(), replaced=replaced, stripped=found)
        yield Document(f"gutenberg:{self.book_id}", [text])


class Builtin(Source):
    """A corpus bundled with the package: one document per work."""

    def __init__(self, spec: str):
        super().__init__()
        name = spec.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_CORPORA:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_CORPORA)
            raise UserError(f"unknown builtin corpus {spec!r}; available: {known}")
        data = (resources.files("gptforge") / "corpora" / BUILTIN_CORPORA[name]).read_bytes()
        self.works = json.loads(lzma.decompress(data))["documents"]
        self.spec, self.count, self.size = spec, len(self.works), sum(len(w["text"]) for w in self.works)
        self.record = {"path": spec, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "replaced": 0}

    def identity(self) -> Any:
        return [self.spec, self.record["sha256"]]

    def documents(self) -> Iterator[Document]:
        for work in self.works:
            yield Document(f"{self.spec}/{work['name']}", [work["text"]])


def _row_text(row: Any, field: str, where: str) -> str:
    """The text of one jsonl / parquet / dataset row (None counts as an empty document)."""
    if not isinstance(row, dict) or field not in row:
        fields = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise UserError(f"{where} has no {field!r} field (it has: {fields}); choose one with --text-field")
    text = row[field]
    if text is not None and not isinstance(text, str):
        raise UserError(f"{where}: field {field!r} holds {type(text).__name__}, not text")
    return text or ""


class JsonlFile(TextFile):
    """JSON Lines: one object per line, one document per object (blank lines are skipped)."""

    def __init__(self, path: Path, field: str):
        super().__init__(path, text_field=field)
        self.field = field
        self._count: int | None = None

    @property
    def count(self) -> int:  # a scan of the file, made only when the split needs it
        if self._count is None:
            with _open(self.path) as f:
                self._count = sum(1 for line in f if line.strip())
        return self._count

    def documents(self) -> Iterator[Document]:
        digest, rows, replaced = hashlib.sha256(), 0, 0
        with _open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                digest.update(line)
                if not line.strip():
                    continue
                where = f"{self.path}:{lineno}"
                decoded, bad = decode_text(line, where)
                row = parse_json(decoded, where)
                rows, replaced = rows + 1, replaced + bad
                yield Document(where, [_row_text(row, self.field, where)])
        self.record.update(sha256=digest.hexdigest(), rows=rows, replaced=replaced)


class ParquetFile(TextFile):
    """A parquet file read one record batch at a time (needs pyarrow); one document per row."""

    def __init__(self, path: Path, field: str):
        super().__init__(path, text_field=field)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"reading {path} needs pyarrow: pip install 'gptforge[datasets]'") from None
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises its own error types for a damaged or foreign file
            raise UserError(f"{path} is not a readable parquet file ({first_line(e)})") from None
        columns = self.file.schema_arrow.names
        if field not in columns:
            raise UserError(f"{path} has no {field!r} column (it has: {', '.join(columns)}); "
                            "choose one with --text-field")
        self.field, self.count = field, self.file.metadata.num_rows

    def documents(self) -> Iterator[Document]:
        row = 0
        for batch in self.file.iter_batches(batch_size=1024, columns=[self.field]):
            for text in batch.column(0).to_pylist():
                where = f"{self.path}#{row}"
                row += 1
                yield Document(where, [_row_text({self.field: text}, self.field, where)])
        digest = hashlib.sha256()
        with _open(self.path) as f:
            while block := f.read(READ_BYTES):
                digest.update(block)
        self.record.update(sha256=digest.hexdigest(), rows=row)


class HFDataset(Source):
    """`hf:NAME[:CONFIG]` through `datasets` in streaming mode: rows arrive as they download."""

    count = None  # unknown until the stream ends

    def __init__(self, spec: str, options: SourceOptions):
        super().__init__()
        try:
            import datasets
        except ImportError:
            raise UserError(f"{spec} needs the Hugging Face datasets package: "
                            "pip install 'gptforge[datasets]'") from None
        name, _, config = spec.removeprefix(HF_PREFIX).partition(":")
        if not name:
            raise UserError(f"{spec!r}: name a dataset, like hf:roneneldan/TinyStories")
        self.spec, self.field = spec, options.text_field
        self.record = {"hf": name, "config": config or None, "split": options.hf_split, "text_field": self.field}
        # The hub client logs each of its own retries; opening fails (or not) as one line of ours.
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)
        try:
            self.dataset = datasets.load_dataset(name, config or None, split=options.hf_split, streaming=True)
        except Exception as e:  # datasets raises many types (not found, offline, bad split, ...)
            raise UserError(f"cannot open Hugging Face dataset {spec}: {first_line(e)}") from None
        finally:
            hub_log.setLevel(level)

    def identity(self) -> Any:
        return self.record

    def rows(self) -> Iterator[dict]:
        """The dataset's rows as they arrive (fine-tuning reads whole records)."""
        rows = iter(self.dataset)
        index = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except Exception as e:  # a download failing mid-stream
                raise UserError(f"reading {self.spec} failed at row {index}: {first_line(e)}") from None
            index += 1
            yield row
        self.record["rows"] = index

    def documents(self) -> Iterator[Document]:
        for index, row in enumerate(self.rows()):
            where = f"{self.spec} row {index}"
            yield Document(where, [_row_text(row, self.field, where)])


def expand_input(spec: str) -> list[Path]:
    """The files one local INPUT names: a file, a folder (its *.txt files, recursively) or a glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {spec} contains no .txt files")
        return files
    if any(c in spec for c in "*?["):
        matches = glob.glob(os.path.expanduser(spec), recursive=True)
        files = sorted(Path(p) for p in matches if os.path.isfile(p))
        if not files:
            raise UserError(f"pattern {spec!r} matches no files")
        return files
    raise UserError(f"no such file or folder: {spec}")


def _file_source(path: Path, options: SourceOptions) -> Source:
    if path.suffix == ".jsonl":
        return JsonlFile(path, options.text_field)
    if path.suffix == ".parquet":
        return ParquetFile(path, options.text_field)
    return TextFile(path)


def _url_source(url: str, options: SourceOptions) -> Source:
    source = _file_source(fetch(url, options.cache / "urls" / url_cache_name(url), options.retries,
                                options.backoff), options)
    source.record["url"] = url
    return source


def read_documents(inputs: list[str] | str, options: SourceOptions | None = None) -> list[tuple[str, str]]:
    """(name, text) of every non-empty document of the INPUTs, read into memory (for small
    corpora and tests; training and prepare stream them instead)."""
    sources = open_sources(inputs, options)
    docs = [(doc.name, "".join(doc.blocks)) for source in sources for doc in source.documents()]
    return [(name, text) for name, text in docs if text]


def open_sources(inputs: list[str] | str, options: SourceOptions | None = None) -> list[Source]:
    """The sources of every INPUT, in order; downloads happen here, before any tokenizing.

    An input reached twice (a file through a folder and a glob, a book id twice) is read once.
    """
    options = options or SourceOptions()
    inputs = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    if not inputs and not options.gutenberg_top:
        raise UserError("no input given: name text files, folders, glob patterns, builtin:shakespeare, "
                        "gutenberg:IDS, a URL, hf:NAME, or .jsonl / .parquet files")
    sources: list[Source] = []
    seen: set[Any] = set()

    def book(book_id: int) -> None:
        if ("gutenberg", book_id) not in seen:
            seen.add(("gutenberg", book_id))
            sources.append(GutenbergBook(book_id, options))

    for spec in inputs:
        if spec.startswith(GUTENBERG_PREFIX):
            for book_id in parse_ids(spec):
                book(book_id)
            continue
        if ("input", spec) in seen:
            continue
        seen.add(("input", spec))
        if spec.startswith(BUILTIN_PREFIX):
            sources.append(Builtin(spec))
        elif spec.startswith(("http://", "https://")):
            sources.append(_url_source(spec, options))
        elif spec.startswith(HF_PREFIX):
            sources.append(HFDataset(spec, options))
        else:
            for path in expand_input(spec):
                key = ("file", str(path.resolve()))
                if key not in seen:
                    seen.add(key)
                    sources.append(_file_source(path, options))
    if options.gutenberg_top:
        for book_id in top_ids(options.gutenberg_top, options.mirror, options.retries,
                                         options.backoff):
            book(book_id)
    return sources
