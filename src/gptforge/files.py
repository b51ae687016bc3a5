"""Crash-safe folder writes: a folder appears complete at its final path, or not at all.

No torch here: corpus preparation (whose worker processes should stay light) uses it too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
