"""`gptforge tokenizer encode|decode|stats` as a user runs them."""

from __future__ import annotations

import re

from gptforge.tokenizer import gpt2

from helpers import assert_user_error, run_cli_here

TEXT = "Thou art <|endoftext|> more lovely,\n  and more temperate: 😀"


def test_encode_then_decode_round_trips_through_the_shell(tiny_bpe, tiny_bpe_dir):
    for name, tokenizer in (("gpt2", gpt2()), (str(tiny_bpe_dir), tiny_bpe)):
        encoded = run_cli_here("tokenizer", "encode", TEXT, "--tokenizer", name)
        assert encoded.returncode == 0, encoded.stderr
        assert encoded.stdout.split() == [str(i) for i in tokenizer.encode(TEXT)]
        decoded = run_cli_here("tokenizer", "decode", "--tokenizer", name, input=encoded.stdout)
        assert decoded.returncode == 0 and decoded.stdout == TEXT + "\n"
    pieces = run_cli_here("tokenizer", "encode", "--pieces", "--tokenizer", str(tiny_bpe_dir), input="Thou art")
    assert pieces.stdout.splitlines() == [f"{i}\t{tiny_bpe.token_bytes(i)!r}" for i in tiny_bpe.encode("Thou art")]


def test_stats_side_by_side_with_gpt2(tiny_bpe, tiny_bpe_dir, text):
    result = run_cli_here("tokenizer", "stats", str(text), "--tokenizer", str(tiny_bpe_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    n_bytes = len(text.read_bytes())
    assert lines[0] == f"{len(text.read_text()):,} characters, {n_bytes:,} bytes"
    assert lines[1].split() == ["tokenizer", tiny_bpe.name, "gpt2"]
    ours, theirs = len(tiny_bpe.encode(text.read_text())), len(gpt2().encode(text.read_text()))
    assert lines[3].split() == ["tokens", f"{ours:,}", f"{theirs:,}"]
    assert lines[4].split()[-2:] == [f"{n_bytes / ours:.3f}", f"{n_bytes / theirs:.3f}"]
    used = re.findall(r"([\d,]+) \(([\d.]+)%\)", lines[5])
    assert len(used) == 2 and int(used[0][0].replace(",", "")) == len(set(tiny_bpe.encode(text.read_text())))
    assert lines[6].split() == ["encoded", "by", "tiktoken", "tiktoken"]


def test_bad_input_is_one_line(tiny_bpe_dir, tmp_path):
    assert_user_error(run_cli_here("tokenizer", "decode", "5", "99999", "--tokenizer", str(tiny_bpe_dir)),
                      "id 99999 is not in")
    assert_user_error(run_cli_here("tokenizer", "decode", "--tokenizer", "gpt2", input="1 two"), "ids must be integers")
    assert_user_error(run_cli_here("tokenizer", "encode", "x", "--tokenizer", str(tmp_path)), "is not a tokenizer folder")
    assert_user_error(run_cli_here("tokenizer"), "name an action")


def test_train_from_the_shell_gives_the_same_tokenizer_json(tiny_bpe, tiny_bpe_dir, text, tmp_path):
    out = tmp_path / "tok"
    result = run_cli_here("tokenizer", "train", str(text), "--vocab-size", "400", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: tokenizer {tiny_bpe.name}, 400 ids (<|endoftext|> = 0, ")
    # Another process, its own threads: byte for byte the in-process fixture's file.
    assert (out / "tokenizer.json").read_bytes() == (tiny_bpe_dir / "tokenizer.json").read_bytes()
    tampered = (out / "tokenizer.json").read_text().replace('"Ġt', '"Ġq', 1)
    assert tampered != (out / "tokenizer.json").read_text()
    (out / "tokenizer.json").write_text(tampered)
    assert_user_error(run_cli_here("tokenizer", "encode", "x", "--tokenizer", str(out)), "does not match the sha256")
