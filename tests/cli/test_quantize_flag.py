"""--quantize int8, one flag shared by generate, chat, serve, eval and bench generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptforge.weights.checkpoint import save_checkpoint

from helpers import assert_user_error, random_gpt, run_cli_here

TINY = ("--preset", "gpt2-tiny", "--random-init", "--seed", "3", "--device", "cpu")


def test_generate_with_int8_greedy_is_deterministic():
    args = ("generate", *TINY, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "8", "--quantize", "int8")
    first, second = run_cli_here(*args), run_cli_here(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("Hello")


def test_eval_int8_reports_bits_per_byte_close_to_float32(tmp_path):
    save_checkpoint(tmp_path / "ckpt", random_gpt(0, vocab_size=50257, context_length=32))  # GPT-2 tokenizer
    text = tmp_path / "held_out.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    results = {}
    for how in (None, "int8"):
        flags = ("--quantize", how) if how else ()
        r = run_cli_here("eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(text), "--device", "cpu",
                         "--json", *flags)
        assert r.returncode == 0, r.stderr
        results[how] = json.loads(r.stdout)
    assert results["int8"]["quantize"] == "int8" and results[None]["quantize"] is None
    assert results["int8"]["tokens"] == results[None]["tokens"]
    assert results["int8"]["bits_per_byte"] != results[None]["bits_per_byte"]  # it did quantize
    assert results["int8"]["bits_per_byte"] == pytest.approx(results[None]["bits_per_byte"], rel=0.01)
    mc = run_cli_here("eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", "mc", "--limit", "3", "--json",
                      "--data", str(Path(__file__).parent.parent / "evaluate" / "hellaswag_sample.jsonl"),
                      "--device", "cpu", "--quantize", "int8")
    assert mc.returncode == 0, mc.stderr
    assert json.loads(mc.stdout)["items"] == 3


@pytest.mark.parametrize("args, fragment", [
    (("generate", *TINY, "--prompt", "x", "--quantize", "int8", "--dtype", "bfloat16"), "runs on a CPU in float32"),
    (("chat", *TINY, "--quantize", "int4"), "invalid choice: 'int4'"),
    (("bench", "train", "--preset", "gpt2-tiny", "--quantize", "int8"), "--quantize is for bench generate"),
    (("serve", *TINY, "--quantize", "int8", "--dtype", "bfloat16", "--port", "0"), "runs on a CPU in float32"),
])
def test_the_flag_refuses_what_it_cannot_do(args, fragment):
    assert_user_error(run_cli_here(*args), fragment)
