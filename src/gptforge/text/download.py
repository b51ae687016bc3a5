"""Downloads over HTTP(S): fetched once into a cache folder, with bounded retries and one-line errors.

Server errors (5xx, 429), dropped connections and timeouts are retried with exponential backoff;
anything else (404, 403, a bad URL) fails at once. A download is written under a temporary name and
renamed when complete, so the cache never holds half a file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError

USER_AGENT = "gptforge (a GPT-2 pretraining toolkit; python urllib)"  # some servers refuse urllib's default
TIMEOUT_S = 60.0
MAX_BACKOFF_S = 30.0


class NotFound(UserError):
    """The server answered 404: nothing to retry, but a caller may try another URL."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptforge"


def url_cache_name(url: str) -> str:
    """A file name for a URL: readable tail, plus a hash so different URLs never collide."""
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-60:] or "index"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{tail}"


def _attempt(url: str, dest: Path) -> None:
    """One GET of url into dest; raises OSError/HTTPException for anything worth retrying."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(dest, "wb") as f:
        expected = response.headers.get("Content-Length")
        written = 0
        while block := response.read(1 << 20):
            f.write(block)
            written += len(block)
        if expected is not None and written != int(expected):  # the connection dropped mid-body
            raise http.client.IncompleteRead(b"", int(expected) - written)


def _retryable(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    return isinstance(error, (OSError, http.client.HTTPException))  # URLError, timeouts, resets


def _describe(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def fetch(url: str, dest: Path, retries: int = 3, backoff: float = 1.0) -> Path:
    """Download url to dest unless dest already exists (the cache); return dest.

    Up to `retries` retries after the first attempt, waiting backoff, 2*backoff, ... seconds
    (at most MAX_BACKOFF_S each). Raises NotFound for a 404 and UserError for every other failure.
    """
    if dest.is_file():
        return dest
    if retries < 0:
        raise UserError(f"retries must be >= 0, got {retries}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the cache folder {dest.parent}: {e.strerror or e}") from None
    part = dest.with_name(dest.name + f".part-{os.getpid()}")
    try:
        for attempt in range(retries + 1):
            try:
                _attempt(url, part)
                os.replace(part, dest)
                return dest
            except (OSError, http.client.HTTPException, ValueError) as error:
                if isinstance(error, urllib.error.HTTPError) and error.code == 404:
                    raise NotFound(f"cannot download {url}: HTTP 404 Not Found") from None
                if isinstance(error, ValueError) or not _retryable(error):  # ValueError: not a URL
                    raise UserError(f"cannot download {url}: {_describe(error)}") from None
                if attempt == retries:
                    raise UserError(f"cannot download {url}: {_describe(error)} "
                                    f"(gave up after {retries + 1} attempts)") from None
                wait = min(backoff * 2 ** attempt, MAX_BACKOFF_S)
                if sys.stderr.isatty():
                    print(f"note: {url}: {_describe(error)}; retrying in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
    finally:
        part.unlink(missing_ok=True)
    raise AssertionError("unreachable")
