"""Crash-safe writes: a file or folder appears complete at its final path, or not at all.

No torch here: corpus preparation (whose worker processes should stay light) uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def raw_write(file, data) -> int:
    """The one write call of every Output (fault-injection tests replace it)."""
    return file.write(data)


class Output:
    """A file open for writing that keeps the first OSError its writes raised: a writer that wraps
    it (torch.save) replaces that error with its own, and the errno (a full disk, a failing one)
    is what the user needs to hear. Every write of a checkpoint goes through one (see write_file)."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by write_file)
        self.error: OSError | None = None

    def write(self, data) -> int:
        return self._kept(raw_write, self.file, data)

    def flush(self) -> None:
        self._kept(type(self.file).flush, self.file)

    def _kept(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            self.error = self.error or e
            raise


def write_file(path: Path, fill: Callable[[Output], None]) -> None:
    """Create `path` and fill it through `fill(output)`. An OSError of a write is raised as itself,
    whatever `fill` made of it; so is one of the flush when the file closes."""
    output = Output(path)
    try:
        with output.file:
            fill(output)
    except Exception as e:
        if output.error is not None and e is not output.error:
            raise output.error from None
        raise


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; once the block completes it is fsynced and
    renamed over `path` (one rename: readers see the old file or the new one, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    data = data.encode() if isinstance(data, str) else data
    with atomic_file(path) as tmp:
        write_file(tmp, lambda f: f.write(data))


def write_json(path: Path, data) -> None:
    """Write indented JSON atomically."""
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def parse_json(text: str | bytes, where: str):
    """`text` parsed as JSON; invalid JSON, or JSON nested deeper than Python's parser recurses
    (100k '[' raise RecursionError), is one UserError line naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = f", line {e.lineno}" if e.lineno > 1 else ""
        raise UserError(f"{where} is not valid JSON ({e.msg}{line})") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply to read (JSON more than "
                        f"{sys.getrecursionlimit():,} levels deep)") from None


def read_json(path: Path, advice: str = ""):
    """A JSON file's content; a missing, unreadable or invalid file is one UserError line, with
    `advice` (what to do about it) appended."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing{advice}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise UserError(f"cannot read {path}: {reason}{advice}") from None


def replace_folder(new: Path, path: Path) -> None:
    """Rename the folder `new` to `path`. An existing `path` is set aside first, deleted only once
    `new` is in place, and put back if that rename fails."""
    if not path.exists():
        new.rename(path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    path.rename(old)
    try:
        new.rename(path)
    except BaseException:
        old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; it is fsynced and renamed to `path` only
    once the block completes, replacing what was there, so `path` is never half of a folder. A
    crash during the replacement's two renames can leave the old folder under `.NAME.old-PID`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            fsync(file)
        replace_folder(tmp, path)
        fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace a folder the user may still want; say how to insist."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty; pass --overwrite to replace it")
