"""Gradient accumulation, mixed precision and torch.compile in the training loop."""

import math

import pytest
import torch
from safetensors.torch import load_file

from gptforge.training import train
from gptforge.training.config import TrainConfig


def run(text, out, **fields):
    base = dict(data=str(text), preset="gpt2-tiny", context_length=32, dropout=0.0, lr=1e-3,
                eval_every=1, eval_batches=2, save_every=0, device="cpu", out=str(out), seed=7)
    return train(TrainConfig.of(**{**base, **fields}), progress=False)


def test_accumulating_4x2_equals_one_batch_of_8(text, tmp_path):
    big = run(text, tmp_path / "big", batch_size=8, max_steps=2)
    accum = run(text, tmp_path / "accum", batch_size=2, grad_accum=4, max_steps=2)
    a = load_file(big.checkpoint / "model.safetensors")
    b = load_file(accum.checkpoint / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert big.train_loss == pytest.approx(accum.train_loss, abs=1e-5)
    assert big.tokens_seen == accum.tokens_seen == 2 * 8 * 32
    # and the weights did move: the comparison is not between two untouched models
    first = run(text, tmp_path / "first", batch_size=8, max_steps=1)
    c = load_file(first.checkpoint / "model.safetensors")
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4


@pytest.mark.slow  # two 12-step runs
def test_bf16_autocast_tracks_fp32(text, tmp_path):
    fp32 = run(text, tmp_path / "fp32", batch_size=4, max_steps=12, eval_every=4, lr=3e-3)
    bf16 = run(text, tmp_path / "bf16", batch_size=4, max_steps=12, eval_every=4, lr=3e-3,
               dtype="bfloat16")
    assert bf16.train_loss < 10.0  # it learned from ~10.8
    assert abs(bf16.train_loss - fp32.train_loss) < 0.1
    assert abs(bf16.val_loss - fp32.val_loss) < 0.1


@pytest.mark.slow  # runs and a resume
def test_fp16_with_grad_scaler_runs_and_resumes(text, tmp_path):
    result = run(text, tmp_path / "fp16", batch_size=4, max_steps=3, dtype="float16", save_every=2)
    assert math.isfinite(result.train_loss)
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    resumed = train(resume=tmp_path / "fp16", max_steps=4, progress=False)
    assert resumed.step == 4


@pytest.mark.slow
def test_compile_trains_like_eager(text, tmp_path):
    eager = run(text, tmp_path / "eager", batch_size=2, max_steps=2)
    compiled = run(text, tmp_path / "compiled", batch_size=2, max_steps=2, compile=True)
    assert compiled.train_loss == pytest.approx(eager.train_loss, abs=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_the_model_compiles_to_one_graph(arch):
    """torch.compile sees the whole forward (and loss) as one graph: a break would split it into
    pieces that cannot be fused across, as a per-call host query once did in model.linear."""
    import torch._dynamo as dynamo

    from gptforge import GPT, GPTConfig

    model = GPT(GPTConfig.from_preset("gpt2-tiny", context_length=16, arch=arch)).train()
    x = torch.randint(0, 50257, (2, 16))
    assert dynamo.explain(model)(x, targets=x).graph_break_count == 0
    with torch.no_grad():
        assert dynamo.explain(model.eval())(x).graph_break_count == 0
