"""An index of documents: one SQLite database (DIR/index.sqlite) holding the documents, their
chunks, an FTS5 table over the chunks for BM25 (see search.py), and the settings it was built with.

Adding is incremental (a file whose sha256 changed is re-chunked, one gone from a folder being
re-added is dropped, an unchanged one is skipped) and one transaction: a crash or kill mid-way
leaves the index as it was before.

With an embedder (retrieval/embed.py) every chunk also has a vector: float32 bytes in a BLOB of the
`vectors` table, searched by a plain scan in numpy (search.py). At our sizes that is simpler than a
vector extension such as sqlite-vec, and as exact (its vec0 tables scan too): no native extension
to load (many Pythons' sqlite3 cannot load one), vectors written in the same transaction as their
chunks, memory bounded by a scan in blocks. The embedder is the index's own, like its chunk
settings: its record is kept in meta, later adds use it, and asking for another is refused.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tokenizer import TOKENIZER_DIR, Tokenizer, gpt2, load_tokenizer, tokenizer_from_record
from .chunking import ChunkSettings, chunk_text
from .readers import Unreadable, find_files, read_document

INDEX_FILE = "index.sqlite"
SCHEMA_VERSION = 1

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",  # value: JSON (null: not set)
    ("CREATE TABLE documents (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, "
     "sha256 TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL)"),
    # line_start/line_end: in the file (a PDF: pages); char_start/char_end: in the document's text
    ("CREATE TABLE chunks (id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES documents(id), "
     "ordinal INTEGER NOT NULL, line_start INTEGER NOT NULL, line_end INTEGER NOT NULL, "
     "char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, text TEXT NOT NULL, tokens INTEGER NOT NULL, "
     "UNIQUE (doc_id, ordinal))"),
    # one embedding per chunk (float32, unit length), by the embedder that meta's 'embedder' names
    "CREATE TABLE vectors (chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id), vector BLOB NOT NULL)",
    # BM25 over the chunks' text: external content (the text is stored once, in chunks), kept in
    # step by the triggers
    "CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='unicode61')",
    ("CREATE TRIGGER chunks_added AFTER INSERT ON chunks BEGIN "
     "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END"),
    ("CREATE TRIGGER chunks_removed AFTER DELETE ON chunks BEGIN "
     "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); "
     "DELETE FROM vectors WHERE chunk_id = old.id; END"),
)


@dataclass
class AddReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks: int = 0  # chunks written
    vectors: int = 0  # chunks embedded
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def index_file(folder: str | Path) -> Path:
    return Path(folder).expanduser() / INDEX_FILE


def connect(folder: str | Path, create: bool = False) -> sqlite3.Connection:
    """The index's database; a folder without one is a UserError unless `create`."""
    path = index_file(folder)
    if not create and not path.is_file():
        raise UserError(f"no index at {folder} (make one with: gptforge index add PATH --index {folder})")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None)  # transactions are ours (BEGIN IMMEDIATE)
        db.execute("PRAGMA journal_mode=WAL")  # readers keep searching while an add runs
        db.execute("PRAGMA synchronous=FULL")
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path} is not an index: {e}") from None
    if not create and not has_meta:  # the first add into it never committed
        raise UserError(f"no index at {folder}: {path} is empty (its first add was interrupted?)")
    return db


def read_meta(db: sqlite3.Connection) -> dict:
    return {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}


def _settings_of(folder: Path, meta: dict) -> tuple[ChunkSettings, Tokenizer]:
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"index {folder} has schema version {meta.get('schema_version')}, this gptforge "
                        f"reads {SCHEMA_VERSION}: rebuild it in a new folder")
    tokenizer = tokenizer_from_record(meta["tokenizer"], folder / TOKENIZER_DIR, f"index {folder}")
    return ChunkSettings(meta["chunk_tokens"], meta["overlap"]), tokenizer


def _resolve_settings(db: sqlite3.Connection, folder: Path, chunk_tokens: int | None, overlap: int | None,
                      tokenizer: str | Tokenizer | None) -> tuple[ChunkSettings, Tokenizer, bool]:
    """The settings to chunk with: an existing index's own (asking for others is a UserError),
    else the ones asked for. The bool says whether the index is new."""
    asked_tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    meta = read_meta(db) if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() else {}
    if not meta:
        defaults = ChunkSettings()
        settings = ChunkSettings(defaults.chunk_tokens if chunk_tokens is None else chunk_tokens,
                                 defaults.overlap if overlap is None else overlap)
        settings.check()
        return settings, asked_tokenizer or gpt2(), True
    settings, own = _settings_of(folder, meta)
    differs = [f"{name} {mine} (asked: {asked})" for name, mine, asked in
               (("--chunk-tokens", settings.chunk_tokens, chunk_tokens), ("--overlap", settings.overlap, overlap))
               if asked is not None and asked != mine]
    if asked_tokenizer is not None and not asked_tokenizer.same_as(own):
        differs.append(f"tokenizer {own.name} (asked: {asked_tokenizer.name})")
    if differs:
        raise UserError(f"index {folder} was built with {', '.join(differs)}: use its settings, or build "
                        "a new index in another folder")
    return settings, own, False


def _resolve_embedder(db: sqlite3.Connection, folder: Path, asked):
    """The embedder this add uses: the index's own (asking for another is a UserError), else the
    one asked for (recorded now; every chunk gets a vector), else none."""
    from .embed import describe, embedder_of, same_embedder

    own = read_meta(db).get("embedder")
    if own is None:
        if asked is not None:
            db.execute("UPDATE meta SET value = ? WHERE key = 'embedder'", (json.dumps(asked.record),))
        return asked
    if asked is not None and not same_embedder(own, asked.record):
        raise UserError(f"index {folder} was built with the embedder {describe(own)}, not {describe(asked.record)}: "
                        "its vectors cannot be compared; build a new index in another folder")
    return asked if asked is not None else embedder_of(own)


def embed_missing(db: sqlite3.Connection, embedder, batch: int = 256) -> int:
    """Give every chunk without a vector one; returns how many. Every vector has the first one's
    length (an embedder whose vectors changed size is refused)."""
    done = 0
    stored = db.execute("SELECT length(vector) FROM vectors LIMIT 1").fetchone()
    dim = stored[0] // 4 if stored else None  # float32
    while rows := db.execute("SELECT c.id, c.text FROM chunks c LEFT JOIN vectors v ON v.chunk_id = c.id "
                             "WHERE v.chunk_id IS NULL ORDER BY c.id LIMIT ?", (batch,)).fetchall():
        vectors = embedder.embed([text for _, text in rows])
        if len(vectors) != len(rows) or (dim is not None and vectors.shape[1] != dim):
            raise UserError(f"the embedder gave {len(vectors)} vectors of {vectors.shape[1]} dimensions for "
                            f"{len(rows)} chunks (the index's vectors have {dim})")
        dim = vectors.shape[1]
        db.executemany("INSERT INTO vectors VALUES (?, ?)",
                       [(i, v.astype(np.float32).tobytes()) for (i, _), v in zip(rows, vectors)])
        done += len(rows)
    return done


def _create(db: sqlite3.Connection, folder: Path, settings: ChunkSettings, tokenizer: Tokenizer) -> None:
    for statement in SCHEMA:
        db.execute(statement)
    meta = {"schema_version": SCHEMA_VERSION, "tokenizer": tokenizer.describe(), "chunk_tokens": settings.chunk_tokens,
            "overlap": settings.overlap, "embedder": None}
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    tokenizer.save(folder / TOKENIZER_DIR)


def _drop(db: sqlite3.Connection, doc_id: int) -> None:
    db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))  # the triggers update the FTS table
    db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))


def _index_one(db, path: Path, known: dict, settings: ChunkSettings, tokenizer: Tokenizer, report: AddReport,
               text_field: str) -> None:
    """Bring one file's rows up to date with the file."""
    stat = path.stat()
    data = path.read_bytes()  # one file at a time: the corpus is never held whole
    digest = hashlib.sha256(data).hexdigest()
    old = known.get(str(path))
    if old is not None and old[1] == digest:
        report.unchanged += 1
        return
    if old is not None:
        _drop(db, old[0])
    try:
        document = read_document(path, data, text_field)
    except Unreadable as e:
        report.skipped.append((path, str(e)))
        if old is not None:
            report.removed += 1  # its old content is not its content any more
        return
    doc_id = db.execute("INSERT INTO documents (path, kind, sha256, size, mtime) VALUES (?, ?, ?, ?, ?)",
                        (str(path), document.kind, digest, stat.st_size, stat.st_mtime)).lastrowid
    chunks = chunk_text(document.text, tokenizer, settings, markdown=document.kind == "markdown")
    db.executemany(
        "INSERT INTO chunks (doc_id, ordinal, line_start, line_end, char_start, char_end, text, tokens) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(doc_id, i, document.source_line(c.line_start), document.source_line(c.line_end), c.start, c.end, c.text,
          c.tokens) for i, c in enumerate(chunks)])
    report.chunks += len(chunks)
    if old is None:
        report.added += 1
    else:
        report.updated += 1


def add_paths(folder: str | Path, paths: list[str | Path], chunk_tokens: int | None = None,
              overlap: int | None = None, tokenizer: str | Tokenizer | None = None, text_field: str = "text",
              progress: bool = True, warn: Callable[[str], None] | None = None, embedder=None) -> AddReport:
    """Index the files the PATHs name into the index at `folder` (made if missing), in one
    transaction. Files that cannot be read are skipped, each reported through `warn` (one line
    on stderr by default); a folder named again loses the documents no longer in it. With an
    embedder (retrieval/embed.py), or when the index has one, every new chunk gets its vector."""
    folder = Path(folder).expanduser()
    warn = warn or (lambda line: print(line, file=sys.stderr))
    files, folders = find_files(paths)
    db = connect(folder, create=True)
    try:
        try:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time; all or nothing
        except sqlite3.OperationalError as e:  # "database is locked", after waiting 5 s
            raise UserError(f"index {folder} is busy ({e}): another add is writing to it") from None
        settings, tokenizer, new = _resolve_settings(db, folder, chunk_tokens, overlap, tokenizer)
        if new:
            _create(db, folder, settings, tokenizer)
        embedder = _resolve_embedder(db, folder, embedder)
        known = {p: (i, h) for i, p, h in db.execute("SELECT id, path, sha256 FROM documents")}
        report = AddReport()
        seen = {str(f) for f in files}
        for path, (doc_id, _) in known.items():
            if path not in seen and any(Path(path).is_relative_to(d) for d in folders):
                _drop(db, doc_id)
                report.removed += 1
        from tqdm import tqdm

        for path in tqdm(files, desc="indexing", unit="file", disable=not progress, file=sys.stderr):
            try:
                _index_one(db, path, known, settings, tokenizer, report, text_field)
            except OSError as e:
                report.skipped.append((path, e.strerror or str(e)))
        if embedder is not None:
            report.vectors = embed_missing(db, embedder)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()
    for path, why in report.skipped:
        warn(f"skipped {path}: {why}")
    if getattr(embedder, "cut", 0):
        warn(f"{embedder.cut} chunks were longer than the embedder's context: each vector is of its first "
             f"{embedder.model.config.context_length} tokens (a smaller --chunk-tokens avoids it)")
    return report


@dataclass
class DocumentRow:
    path: str
    kind: str
    size: int
    sha256: str
    chunks: int
    tokens: int


def list_documents(folder: str | Path) -> list[DocumentRow]:
    """The indexed documents, by path."""
    db = connect(folder)
    try:
        return [DocumentRow(*row) for row in db.execute(
            "SELECT d.path, d.kind, d.size, d.sha256, count(c.id), coalesce(sum(c.tokens), 0) FROM documents d "
            "LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id ORDER BY d.path")]
    finally:
        db.close()


def index_stats(folder: str | Path) -> dict:
    """What the index holds and the settings it was built with."""
    db = connect(folder)
    try:
        meta = read_meta(db)
        documents, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM documents").fetchone()
        chunks, tokens = db.execute("SELECT count(*), coalesce(sum(tokens), 0) FROM chunks").fetchone()
        vectors = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    finally:
        db.close()
    on_disk = sum(f.stat().st_size for f in Path(folder).expanduser().glob(INDEX_FILE + "*"))
    return {"documents": documents, "bytes": size, "chunks": chunks, "tokens": tokens, "vectors": vectors,
            "index_bytes": on_disk, "chunk_tokens": meta["chunk_tokens"], "overlap": meta["overlap"],
            "tokenizer": meta["tokenizer"]["name"], "embedder": meta["embedder"],
            "schema_version": meta["schema_version"]}
