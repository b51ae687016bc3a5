"""What a PATH names, and each file read as a document's text: .txt, .md, .html (the standard
library's html.parser), .jsonl (one text field per record) and .pdf (pypdf, the `pdf` extra).

A text or Markdown file's text is the file itself (its lines are the file's lines); for the other
kinds the text is extracted, and `Document.source_line` maps a line of that text back to the line
of the file (or the PDF page) it came from, so a chunk can still be cited by where it is.
"""

from __future__ import annotations

import bisect
import io
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..errors import UserError
from ..tokenizer.base import replace_surrogates

# suffix -> kind; a folder contributes only files with these suffixes
KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
         ".htm": "html", ".jsonl": "jsonl", ".pdf": "pdf"}


class Unreadable(Exception):
    """A file that cannot be read as a document; its message is the reason, in a few words."""


@dataclass
class Document:
    text: str
    kind: str  # text, markdown, html, jsonl or pdf
    # (line of `text`, line of the file or PDF page it starts) at each point where the mapping
    # changes, in order; None when the text is the file (line n is line n)
    anchors: list[tuple[int, int]] | None = None

    def source_line(self, line: int) -> int:
        """The file's line (a PDF's page) that line `line` (1-based) of the text came from."""
        if self.anchors is None:
            return line
        i = bisect.bisect_right(self.anchors, (line, float("inf"))) - 1
        return self.anchors[max(i, 0)][1]


def find_files(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(the files the PATHs name, the folders among them), both resolved. A folder gives its files
    with a known suffix, at any depth, in sorted order (hidden ones left out); a file named on its
    own is taken whatever its suffix. A missing or unreadable PATH is a UserError, before any work."""
    files: dict[Path, None] = {}
    folders = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            folder = path.resolve()
            folders.append(folder)
            for f in sorted(folder.rglob("*")):
                hidden = any(part.startswith(".") for part in f.relative_to(folder).parts)
                if f.suffix.lower() in KINDS and f.is_file() and not hidden:
                    files[f] = None
        elif path.is_file():
            files[path.resolve()] = None
        else:
            raise UserError(f"{raw}: no such file or folder")
    return list(files), folders


def read_document(path: Path, data: bytes, text_field: str = "text") -> Document:
    """The document in `data` (the bytes of `path`); Unreadable when it is not one."""
    kind = KINDS.get(path.suffix.lower(), "text")
    if kind == "pdf":
        return _read_pdf(data)
    if b"\0" in data[:8192]:
        raise Unreadable("binary, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8 text (byte {e.start})") from None
    if kind == "html":
        return _read_html(text)
    if kind == "jsonl":
        return _read_jsonl(text, text_field)
    return Document(text, kind)


class _TextOfHTML(HTMLParser):
    """The visible text of a page: runs of whitespace as one space, a line break at each block
    element, scripts and styles left out; remembers which source line each text line began on."""

    BLOCKS = frozenset({"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
              "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "title", "dd", "dt"})
    HIDDEN = frozenset({"script", "style", "template", "noscript"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.anchors: list[tuple[int, int]] = []
        self.line = 1  # the current line of the text being built
        self.at_line_start = True
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self._break()

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(self.hidden - 1, 0)
        elif tag in self.BLOCKS:
            self._break()

    def _break(self):
        if not self.at_line_start:
            self.pieces.append("\n")
            self.line += 1
            self.at_line_start = True

    def handle_data(self, data):
        words = " ".join(data.split())
        if self.hidden or not words:
            return
        if self.at_line_start:
            # the data's first word sits after any leading newlines of the raw text
            lead = len(data) - len(data.lstrip())
            self.anchors.append((self.line, self.getpos()[0] + data[:lead].count("\n")))
            self.at_line_start = False
        elif data[:1].isspace():
            words = " " + words
        self.pieces.append(words + (" " if data[-1:].isspace() else ""))


def _read_html(source: str) -> Document:
    parser = _TextOfHTML()
    parser.feed(source)
    parser.close()
    return Document("".join(parser.pieces).replace(" \n", "\n"), "html", parser.anchors or [(1, 1)])


def _read_jsonl(source: str, field: str) -> Document:
    pieces, anchors, line = [], [], 1
    for number, record_line in enumerate(source.splitlines(), 1):
        if not record_line.strip():
            continue
        try:
            record = json.loads(record_line)
        except ValueError as e:
            raise Unreadable(f"line {number}: not JSON ({e.msg})") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise Unreadable(f"line {number}: no text field {field!r}")
        text = replace_surrogates(text)
        anchors.append((line, number))
        pieces.append(text)
        line += text.count("\n") + 2  # records are joined by a blank line
    return Document("\n\n".join(pieces), "jsonl", anchors or [(1, 1)])


def _read_pdf(data: bytes) -> Document:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise Unreadable("reading PDFs needs pypdf: pip install 'gptforge[pdf]'") from None
    try:
        pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    except Exception as e:  # pypdf raises many types on a damaged file
        raise Unreadable(f"not a readable PDF ({type(e).__name__})") from None
    pieces, anchors, line = [], [], 1
    for number, text in enumerate(pages, 1):
        text = replace_surrogates(text)
        anchors.append((line, number))
        pieces.append(text)
        line += text.count("\n") + 2
    return Document("\n\n".join(pieces), "pdf", anchors or [(1, 1)])
