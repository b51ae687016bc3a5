import json

import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.device import matmul_peak_flops
from gptforge.model import GPT

from helpers import assert_user_error, run_cli, run_cli_here


def test_flops_per_token_formula():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2-124m"))
    weights = 85_056_000 + 50257 * 768  # non-embedding parameters + the (tied) LM head matmul
    assert model.flops_per_token(1024) == 6 * weights + 12 * 12 * 1024 * 768


def test_matmul_peak_is_a_plausible_rate():
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32, n=256, repeats=2)
    assert 1e8 < peak < 1e14


@pytest.mark.slow  # three CLI processes
def test_bench_train_and_generate_smoke():
    r = run_cli("bench", "train", "--preset", "gpt2-tiny", "--context-length", "32", "--steps", "2",
                "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    train = json.loads(r.stdout)
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"] < 1.5 and train["step_s"] > 0
    assert abs(train["tokens_per_s"] * train["step_s"] - 2 * 32) < 1e-6
    modern = run_cli("bench", "train", "--preset", "gpt2-tiny", "--arch", "modern", "--optimizer", "muon",
                     "--context-length", "32", "--steps", "2", "--device", "cpu")
    assert modern.returncode == 0, modern.stderr
    assert "(modern block, " in modern.stdout and "MuonAdamW" in modern.stdout and "MFU" in modern.stdout
    g = run_cli("bench", "generate", "--preset", "gpt2-tiny", "--new-tokens", "10", "--device", "cpu")
    assert g.returncode == 0, g.stderr
    assert "tokens/s" in g.stdout and "MFU" in g.stdout and "kv_cache=True" in g.stdout


def test_bench_bad_input():
    assert_user_error(run_cli_here("bench", "train", "--steps", "0"), "--steps must be a positive integer")
    assert_user_error(run_cli_here("bench", "generate", "--preset", "nope"), "unknown preset")


def test_measuring_the_peak_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    matmul_peak_flops(torch.device("cpu"), torch.float32, n=64, repeats=1)
    assert torch.equal(torch.rand(3), expected)
