"""Project Gutenberg: books by id from a mirror (cached), the popular list, boilerplate stripping."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from ..errors import UserError
from .download import NotFound, fetch

DEFAULT_MIRROR = "https://www.gutenberg.org"
PREFIX = "gutenberg:"

# The line that ends the header (the book starts on the next line): today's "*** START OF THE
# PROJECT GUTENBERG EBOOK ... ***", and the small-print licence of the 1990s texts.
_START = re.compile(r"\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG"
                    r"|\*{3}\s*START OF THE COPYRIGHTED PROJECT GUTENBERG"
                    r"|\*END\*?\s*THE SMALL PRINT)", re.IGNORECASE)
# The line that starts the footer. Older texts put "End of the Project Gutenberg EBook of ..."
# (or "End of Project Gutenberg's ...") just before the *** marker, so the earliest one wins.
_END = re.compile(r"\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG"
                  r"|\*{3}\s*END OF THE COPYRIGHTED PROJECT GUTENBERG"
                  r"|End of (the |this )?Project Gutenberg)", re.IGNORECASE)


def parse_ids(spec: str) -> list[int]:
    """`gutenberg:1342,84, 2701` -> [1342, 84, 2701]."""
    parts = [p.strip() for p in spec.removeprefix(PREFIX).split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"{spec!r}: give Project Gutenberg book ids separated by commas, like gutenberg:1342,84")
    return [int(p) for p in parts]


def strip_boilerplate(text: str) -> tuple[str, bool]:
    """The book without the Project Gutenberg header, footer and licence; line ends become \\n.

    Returns (text, found): found is False when the text has no marker at all (kept whole).
    """
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").splitlines(keepends=True)
    start, end = 0, len(lines)
    for i, line in enumerate(lines):
        if _START.match(line):
            start = i + 1  # a later start marker (a second header block) wins
        elif _END.match(line):
            end = i
            break
    body = "".join(lines[start:end]).strip()
    return (body + "\n" if body else ""), start > 0 or end < len(lines)


def book_urls(book_id: int, mirror: str = DEFAULT_MIRROR) -> list[str]:
    """Where a mirror keeps a book's plain UTF-8 text: the current layout first, then older ones."""
    base = mirror.rstrip("/")
    return [f"{base}/cache/epub/{book_id}/pg{book_id}.txt",
            f"{base}/files/{book_id}/{book_id}-0.txt",
            f"{base}/files/{book_id}/{book_id}.txt"]


def fetch_book(book_id: int, cache_dir: Path, mirror: str = DEFAULT_MIRROR, retries: int = 3,
               backoff: float = 1.0) -> tuple[Path, str]:
    """The cached raw text file of a book (downloaded on first use) and the URL it came from."""
    dest = cache_dir / "gutenberg" / f"pg{book_id}.txt"
    urls = book_urls(book_id, mirror)
    url_note = dest.with_name(dest.name + ".url")  # remembers which URL filled the cache
    if dest.is_file():
        return dest, url_note.read_text().strip() if url_note.is_file() else urls[0]
    for url in urls:
        try:
            fetch(url, dest, retries, backoff)
        except NotFound:
            continue
        url_note.write_text(url + "\n")
        return dest, url
    raise UserError(f"Project Gutenberg book {book_id} was not found on {mirror} (tried {', '.join(urls)})")


def top_ids(n: int, mirror: str = DEFAULT_MIRROR, retries: int = 3, backoff: float = 1.0) -> list[int]:
    """The ids of the first n books of the mirror's popular list (/browse/scores/top), in its order.

    Fetched fresh every time (the list changes daily); the ids used are recorded in meta.json.
    """
    if n < 1:
        raise UserError(f"--gutenberg-top must be a positive number of books, got {n}")
    url = mirror.rstrip("/") + "/browse/scores/top"
    with tempfile.TemporaryDirectory() as tmp:
        page = fetch(url, Path(tmp) / "top.html", retries, backoff).read_text("utf-8", errors="replace")
    ids: list[int] = []
    for match in re.finditer(r'href="/ebooks/(\d+)"', page):
        if int(match.group(1)) not in ids:
            ids.append(int(match.group(1)))
    if not ids:
        raise UserError(f"{url} lists no books; is --mirror a Project Gutenberg site?")
    return ids[:n]
