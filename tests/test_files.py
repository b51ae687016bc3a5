"""Crash-safe writes (files.py) and the checks of user numbers (checks.py)."""

from __future__ import annotations

import math

import pytest

from gptforge.checks import require_int, require_number
from gptforge.errors import UserError
from gptforge.files import atomic_file, atomic_folder, atomic_write, read_json, sha256_file, write_json


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"a": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as tmp:
            tmp.write_text('{"a": ')  # half of the new content, then the process is interrupted
            raise KeyboardInterrupt
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_an_interrupted_folder_write_keeps_the_old_folder(tmp_path):
    out = tmp_path / "checkpoint"
    with atomic_folder(out) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as tmp:
            (tmp / "weights").write_text("new, half")
            raise RuntimeError("disk full")
    assert (out / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_read_json_says_what_is_wrong_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"missing\.json is missing; run prepare"):
        read_json(tmp_path / "missing.json", "; run prepare")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UserError, match=r"cannot read .*bad\.json: Expecting property name"):
        read_json(tmp_path / "bad.json")


def test_sha256_of_a_file_read_in_blocks(tmp_path):
    import hashlib

    data = bytes(range(256)) * 10_000  # 2.5 MB: more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3", None])
def test_require_int_refuses_what_is_not_a_positive_integer(value):
    with pytest.raises(UserError, match="n must be a positive integer"):
        require_int("n", value)


def test_require_int_and_number_accept_what_they_should():
    require_int("n", 1)
    require_int("n", 0, minimum=0)
    require_int("n", None, optional=True)
    require_number("f", 0.0, below=1.0)
    with pytest.raises(UserError, match=r"f must be in \[0, 1\)"):
        require_number("f", 1.0, below=1.0)
    with pytest.raises(UserError, match="f must be > 0"):
        require_number("f", 0.0, strict=True)
    with pytest.raises(UserError, match="f must be >= 0"):
        require_number("f", math.nan)
