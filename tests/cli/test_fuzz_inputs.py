"""Property-based fuzzing of the CLI's parsers: generated bad values for every typed or choice flag of
each command, generated TOML for `train --config`, generated fine-tuning and JSONL records. Whatever
comes in, the answer is never a traceback or an internal error: a bad value is exit 2 with one line
on stderr, a good one reaches the next check (each command is given a missing input after the value
under test, so nothing trains, loads or downloads).

Bounded and reproducible: a fixed seed (derandomize) and GPTFORGE_FUZZ_EXAMPLES examples per test
(default 50); each test prints how many inputs it tried.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge.cli import build_parser, main
from gptforge.training.config import TrainConfig
from gptforge.data.instructions import read_examples
from gptforge.errors import UserError

EXAMPLES = int(os.environ.get("GPTFORGE_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MISSING = "/nonexistent-gptforge-fuzz/input"

# Each command with its required arguments pointing at inputs that do not exist: a value that passes
# its own check meets "no such file" (exit 2) before any work starts.
COMMANDS = {
    "train": ["train", "--data", MISSING, "--out", "{tmp}/run"],
    "finetune": ["finetune", "--init-from", MISSING, "--data", MISSING, "--out", "{tmp}/run"],
    "prepare": ["prepare", MISSING, "--out", "{tmp}/corpus"],
    "generate": ["generate", "--checkpoint", MISSING, "--prompt", "x"],
    "eval": ["eval", "--checkpoint", MISSING, "--data", MISSING],
    "classify": ["classify", "--checkpoint", MISSING, "x"],
    "chat": ["chat", "--checkpoint", MISSING],
    "ask": ["ask", "--checkpoint", MISSING, "--index", MISSING, "question"],
    "serve": ["serve", "--checkpoint", MISSING],
    "tokenizer train": ["tokenizer", "train", MISSING, "--out", "{tmp}/tok", "--vocab-size", "300"],
    "tokenizer encode": ["tokenizer", "encode", "x", "--tokenizer", MISSING],
    "tokenizer stats": ["tokenizer", "stats", MISSING, "--tokenizer", MISSING],
}
# String flags whose values are checked as they are; any other string flag names a file, a hub id or
# a URL, so it gets an absolute path in the test's folder (never a hub id: nothing goes online).
CHECKED_STRINGS = {"--device", "--host", "--prompt", "--system", "--model-name", "--text-field", "--hf-split"}

NASTY = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-1e309", "1e-300", "-1e-300", "-0", "0", "-1", "1",
         str(2**31), str(2**63), str(2**64), str(-2**63 - 1), str(10**100), "9" * 5000, "0x10", "1_000", "1e3",
         "3.5", "-3.5", "\u0661\u0662", "\u00bd", "\u00a0", "-", "--", "true", "None", "10m", "1h", "-5s",
         "1.5h", "cuda:99", "cpu:0", "mps", "cuda:-1", "0.0.0.0", "::1", "\U0001F600", "a\tb", "a\nb"]
VALUES = st.one_of(st.sampled_from(NASTY), st.integers(-2**70, 2**70).map(str),
                   st.floats().map(repr), st.text(st.characters(blacklist_characters="\x00"), max_size=12))


def subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def fuzzed_flags(words: list[str]) -> dict[str, bool]:
    """The flags of a command that take a value: {flag: whether it names a file (see CHECKED_STRINGS)}."""
    flags = {}
    for action in subparser(build_parser(), words)._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if not long or action.nargs == 0 or long[0] in ("--help", "--version"):
            continue
        flags[long[0]] = action.type in (None, str) and action.choices is None and long[0] not in CHECKED_STRINGS
    return dict(sorted(flags.items()))


PATH_TAILS = st.one_of(st.text(st.characters(blacklist_characters="\x00"), max_size=12),
                       st.sampled_from(["9" * 5000, "a/" * 3000, "x" * 256, "..", "../..", "~", ".", " "]))


def run_main(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of gptforge.cli.main in this process; an exception escaping it fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


def assert_one_line(code: int, stderr: str, argv) -> None:
    assert code == 2, (argv, code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (argv, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, (argv, stderr)


def report(capsys, what: str, tried: int) -> None:
    with capsys.disabled():
        print(f"\nfuzz: {tried} generated inputs to {what}: no traceback, no internal error")


def offline(url, dest):
    raise ValueError("the fuzzing harness never downloads")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_flag_values_are_one_line(command, tmp_path, tmp_path_factory, capsys, monkeypatch):
    # A valid --gutenberg-top would download the popular list: every download fails at once instead
    # (no retries, no network), and the cache folder lies outside the folder checked for writes.
    monkeypatch.setattr("gptforge.text.download._attempt", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    base = [w.replace("{tmp}", str(tmp_path)) for w in COMMANDS[command]]
    words = command.split()
    flags = fuzzed_flags(words)
    assert flags, command
    tried = []

    @FUZZ
    @given(flag=st.sampled_from(sorted(flags)), value=VALUES, tail=PATH_TAILS)
    def check(flag, value, tail):
        if flags[flag]:
            value = f"{tmp_path}/missing/{tail}"
        argv = [*words, f"{flag}={value}", *base[len(words):]]  # --flag=value: a leading '-' stays a value
        tried.append(argv)
        code, stderr = run_main(argv)
        assert_one_line(code, stderr, argv)
        assert not any(tmp_path.iterdir()), argv  # nothing is written

    check()
    report(capsys, f"`gptforge {command}` flags ({len(flags)} flags)", len(tried))


# --- train --config: TOML with wrong types, unknown keys, extreme numbers -----------------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)  # a TOML datetime literal


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1, -2**63]),
                    st.floats(), st.text(max_size=10), st.sampled_from(["1979-05-27T07:32:00Z", "07:32:00"]))
TOML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(min_size=1, max_size=5),
                                                                            inner, max_size=2)), max_leaves=6)
FIELDS = sorted(TrainConfig.settings())  # every flat key a config file may set
TOML_FILES = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=8)), TOML_VALUES,
                    min_size=1, max_size=4).map(lambda d: "".join(f"{toml_key(k)} = {toml_value(v)}\n"
                                                                  for k, v in d.items())),
    st.text(max_size=40),  # anything at all, valid TOML or not
)


def test_bad_config_files_are_one_line(tmp_path, capsys):
    config, tried = tmp_path / "config.toml", []

    @FUZZ
    @given(text=TOML_FILES)
    def check(text):
        config.write_text(text, encoding="utf-8")
        argv = ["train", "--config", str(config), "--data", MISSING, "--out", str(tmp_path / "run")]
        tried.append(text)
        assert_one_line(*run_main(argv), text)

    check()
    report(capsys, "`gptforge train --config` files", len(tried))


# --- fine-tuning and JSONL data: records of every wrong shape ------------------------------------

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                              st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                    max_leaves=8)
MESSAGE = st.one_of(JSON, st.fixed_dictionaries({}, optional={"role": st.one_of(
    st.sampled_from(["system", "user", "assistant", "tool", ""]), JSON), "content": JSON}))
RECORD = st.one_of(
    JSON,
    st.fixed_dictionaries({}, optional={"instruction": JSON, "input": JSON, "output": JSON}),
    st.fixed_dictionaries({}, optional={"messages": st.one_of(JSON, st.lists(MESSAGE, max_size=4))}),
    st.fixed_dictionaries({"instruction": st.text(max_size=8), "output": st.text(max_size=8)}),
)
LINES = st.one_of(RECORD.map(lambda r: json.dumps(r, ensure_ascii=False).encode()),
                  st.sampled_from([b"[" * 100_000, b"{" * 50_000, b"\xff\xfe", b'{"a": 1', b"\x00", b"   "]),
                  st.binary(max_size=20))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_bad_fine_tuning_records_are_one_line(tmp_path, suffix, capsys):
    path, tried = tmp_path / f"data{suffix}", []

    @FUZZ
    @given(lines=st.lists(LINES, min_size=1, max_size=4))
    def check(lines):
        body = b"\n".join(lines) if suffix == ".jsonl" else b"[" + b", ".join(lines) + b"]"
        path.write_bytes(body)
        tried.append(body)
        try:
            read_examples(str(path))
        except UserError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)

    check()
    report(capsys, f"fine-tuning data ({suffix})", len(tried))


def test_bad_jsonl_text_records_are_one_line(tmp_path, capsys):
    from gptforge.text import read_documents

    path, tried = tmp_path / "rows.jsonl", []

    @FUZZ
    @given(lines=st.lists(LINES, min_size=1, max_size=4))
    def check(lines):
        path.write_bytes(b"\n".join(lines))
        tried.append(lines)
        try:
            read_documents([str(path)])
        except UserError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)

    check()
    report(capsys, "prepare's .jsonl records", len(tried))


# --- what the fuzzing found, pinned end to end ----------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["prepare", "9" * 5000, "--out", "{tmp}/corpus"],
    ["train", "--init-from", "/" + "9" * 5000, "--data", MISSING, "--out", "{tmp}/run"],
])
def test_a_path_too_long_for_any_file_is_one_line(tmp_path, argv):
    """ENAMETOOLONG from the first stat of a path was an internal error (OSError, exit 1)."""
    from helpers import assert_user_error, run_cli

    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv], timeout=120)
    assert_user_error(result, "File name too long")
    assert len(result.stderr) < 300  # the path is shortened, not echoed whole


@pytest.mark.parametrize("argv", [
    ["prepare", "{tmp}/a\nb", "--out", "{tmp}/corpus"],
    ["tokenizer", "encode", "x", "--tokenizer", "{tmp}/line\rbreak"],
    ["generate", "--checkpoint", MISSING, "--prompt", "x", "--device", "cuda\n:0"],
])
def test_a_line_break_in_a_value_stays_inside_one_line(tmp_path, argv):
    """A message quoting a path or value with a newline in it was two lines."""
    from helpers import assert_user_error, run_cli

    assert_user_error(run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv], timeout=120), "error")


@pytest.mark.parametrize("argv", [
    ["generate", "--temperature=--", "--checkpoint", MISSING, "--prompt", "x"],
    ["generate", "--device=--", "--checkpoint", MISSING, "--prompt", "x"],
    ["chat", "--max-new-tokens=--", "--checkpoint", MISSING],
])
def test_a_value_of_two_dashes_is_a_value(argv):
    """argparse (Python < 3.12) drops a value of exactly "--" and hands the command an empty list:
    `--temperature=--` was an internal TypeError."""
    code, stderr = run_main(argv)
    assert_one_line(code, stderr, argv)
