"""Muon for the blocks' matrices with AdamW for the rest: the split, the step against torch's own
optimizers, the learning rates, the non-finite guard, and bitwise resume."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import gptforge.training.loop as loop
from gptforge.config import GPTConfig
from gptforge.model import GPT
from gptforge.training import train
from gptforge.training.config import OptimArgs, TrainConfig
from gptforge.training.optim import MuonAdamW, make_optimizer, set_lr
from gptforge.training.step import UpdateGuard

CPU = torch.device("cpu")


def model(arch="modern", seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=101, context_length=16, arch=arch))


def backward(m: GPT, seed: int) -> None:
    x = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(seed))
    m(x[:, :-1], targets=x[:, 1:]).backward()


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(arch):
    m = model(arch)
    opt = make_optimizer(m, OptimArgs(optimizer="muon", lr=1e-3, muon_lr=0.02), CPU)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in m.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n, p in m.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert adamw == set(names.values()) - muon and "tok_emb.weight" in adamw
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.out_proj.weight"} <= muon
    set_lr(opt, OptimArgs(optimizer="muon", lr=1e-3, muon_lr=0.02), 0.5)
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-4, 0.01]
    assert type(make_optimizer(m, OptimArgs(), CPU)) is torch.optim.AdamW  # the default


def test_a_muon_step_is_torch_muon_plus_fused_adamw():
    """The composite steps exactly like the two torch optimizers it holds, built by hand."""
    a, b = model(), model()
    cfg = OptimArgs(optimizer="muon", lr=3e-3, weight_decay=0.1)
    composite = make_optimizer(a, cfg, CPU)
    params = dict(b.named_parameters())
    hidden = [p for n, p in params.items() if n.startswith("blocks.") and p.dim() == 2]
    rest = [p for p in params.values() if all(p is not h for h in hidden)]
    muon = torch.optim.Muon(hidden, lr=3e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.1},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=3e-3, fused=True)
    for step in range(3):
        for m in (a, b):
            m.zero_grad()
            backward(m, step)
        composite.step()
        muon.step()
        adamw.step()
    assert all(torch.equal(p, params[n]) for n, p in a.named_parameters())
    assert not torch.equal(a.blocks[0].attn.qkv.weight, model().blocks[0].attn.qkv.weight)


def test_the_guard_skips_a_nonfinite_update_for_both_optimizers():
    m = model()
    opt = make_optimizer(m, OptimArgs(optimizer="muon", lr=3e-3), CPU)
    for step in range(2):  # some state to keep intact
        opt.zero_grad()
        backward(m, step)
        opt.step()
    opt.zero_grad()
    backward(m, 5)
    before = copy.deepcopy((m.state_dict(), opt.state_dict()))
    guard = UpdateGuard(CPU, torch.amp.GradScaler("cpu", enabled=False), step=2)
    guard.step(opt, torch.tensor(math.nan), torch.tensor(0.5))
    after = (m.state_dict(), opt.state_dict())
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    for p, state in after[1]["state"].items():
        assert all(torch.equal(before[1]["state"][p][k], v) for k, v in state.items())
    assert guard.count.item() == 1 and guard.first[0].item() == 3
    guard.step(opt, torch.tensor(1.0), torch.tensor(0.5))  # a finite step updates both
    assert not torch.equal(before[0]["blocks.0.attn.qkv.weight"], m.blocks[0].attn.qkv.weight)
    assert not torch.equal(before[0]["tok_emb.weight"], m.state_dict()["tok_emb.weight"])


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # runs and a resume with Muon
def test_muon_resume_is_bitwise(text, tmp_path):
    # (a constant schedule: a cosine's would depend on the first session's shorter --max-steps)
    fields = dict(data=str(text), preset="gpt2-tiny", arch="modern", optimizer="muon", lr=3e-3, muon_lr=0.02,
                  warmup_steps=2, context_length=32, batch_size=2, dropout=0.1,
                  eval_every=1, eval_batches=1, save_every=3, device="cpu", seed=3)
    straight = train(TrainConfig.of(**fields, max_steps=8, out=str(tmp_path / "a")), progress=False)
    train(TrainConfig.of(**fields, max_steps=4, out=str(tmp_path / "b")), progress=False)
    resumed = train(resume=tmp_path / "b", max_steps=8, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(rows(resumed.run_dir)) == strip(rows(straight.run_dir))
    a, b = load_file(straight.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(straight.checkpoint / "train_state.pt", weights_only=True)["optimizer"]
    assert "momentum_buffer" in state["state"]["blocks.0.attn.qkv.weight"]
    assert "exp_avg" in state["state"]["tok_emb.weight"]
    lrs = [r["lr"] for r in rows(straight.run_dir)]  # the schedule drives AdamW (row "lr") as before
    assert lrs == [1.5e-3] + [3e-3] * 7
    assert rows(straight.run_dir)[-1]["train_loss"] < rows(straight.run_dir)[0]["train_loss"]


def test_a_poisoned_step_is_skipped_under_muon(text, tmp_path, monkeypatch):
    real_loss, calls = loop.batch_loss, {"n": 0}

    def poisoned(m, x, y):
        loss = real_loss(m, x, y)
        if m.training:
            calls["n"] += 1
            return loss * math.nan if calls["n"] == 3 else loss
        return loss

    monkeypatch.setattr(loop, "batch_loss", poisoned)
    result = train(TrainConfig.of(data=str(text), preset="gpt2-tiny", arch="modern", optimizer="muon", max_steps=5,
                               context_length=32, batch_size=2, skip_nonfinite=True, device="cpu",
                               out=str(tmp_path / "run")), progress=False)
    assert result.step == 5 and math.isfinite(result.train_loss)
    assert torch.load(result.checkpoint / "train_state.pt", weights_only=True)["position"]["skipped"] == 1
