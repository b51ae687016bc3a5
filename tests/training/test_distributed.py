"""Two processes through torchrun (gloo on CPU) against one process with gradient accumulation (the
slow tier), and one process as the degenerate case (in-process)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gptforge import distributed
from gptforge.model.lora import is_adapter_key
from gptforge.training.finetune import RESPONSES
from gptforge.weights import load_any

from helpers import run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each


def test_one_process_is_the_degenerate_case(tiny_model, monkeypatch):
    """Without torchrun's variables every helper is the identity, so the loop has one code path;
    the full (unsharded) state round-trips through the state-dict API the checkpoints use."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    cpu = torch.device("cpu")
    d, device = distributed.setup(cpu)
    assert (d, device, d.enabled, d.is_main) == (distributed.Dist(0, 1, 0), cpu, False, True)
    assert distributed.describe(d, "ddp") == ""
    assert distributed.wrap(tiny_model, d, "fsdp", cpu) is tiny_model
    t = torch.tensor([1.5, 2.0])
    assert distributed.mean_over_ranks(t, d) is t
    assert distributed.all_sum([1.0, 2.0], d, cpu) == [1.0, 2.0]
    assert distributed.gather_objects({"rng": 3}, d) == [{"rng": 3}]
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    tiny_model.train()

    def step(token: int) -> None:
        optimizer.zero_grad()
        tiny_model(torch.full((1, 8), token), targets=torch.ones(1, 8, dtype=torch.long)).backward()
        optimizer.step()

    step(0)
    model_state, optimizer_state = distributed.full_state(tiny_model, optimizer)
    assert model_state.keys() == tiny_model.state_dict().keys()
    optimizer_state = copy.deepcopy(optimizer_state)  # on the CPU it shares the live tensors, as a save reads them
    saved = {name: optimizer.state[p]["exp_avg"].clone() for name, p in tiny_model.named_parameters()}
    step(5)  # the moments move on...
    distributed.load_optimizer(tiny_model, optimizer, optimizer_state)  # ...and come back
    for name, p in tiny_model.named_parameters():
        assert torch.equal(optimizer.state[p]["exp_avg"], saved[name]), name
    distributed.teardown(d)  # nothing to leave


def flags(args: dict) -> list[str]:
    return [str(x) for kv in args.items() for x in kv] + ["--no-progress"]


def common(text, out, **extra):
    return flags({"--data": text, "--preset": "gpt2-tiny", "--context-length": 32, "--batch-size": 2,
                  "--dropout": 0.0, "--lr": 1e-3, "--eval-every": 2, "--eval-batches": 2, "--save-every": 3,
                  "--max-steps": 6, "--device": "cpu", "--out": out, **extra})


def torchrun(*args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gptforge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def single(*args, timeout=300):
    return run_cli(*args, timeout=timeout, env=ENV)


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b):
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    assert [r["tokens_seen"] for r in ra] == [r["tokens_seen"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_loss"):
            assert abs(x[key] - y[key]) <= 1e-5 * abs(y[key]), (key, x, y)
    wa = load_file(sorted((a / "checkpoints").iterdir())[-1] / "model.safetensors")
    wb = load_file(sorted((b / "checkpoints").iterdir())[-1] / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


@pytest.fixture(scope="module")
def reference(text, tmp_path_factory):
    """One process, batch 2 x accumulation 2: the data order two ranks of batch 2 split between them."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = single("train", *common(text, out, **{"--grad-accum": 2}))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_accumulation(text, tmp_path, reference, mode):
    r = torchrun("train", *common(text, tmp_path / "run", **{"--distributed": mode}))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run folder:") == 1  # only rank 0 speaks
    assert "x 2 processes" in r.stdout
    assert_same_run(tmp_path / "run", reference)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_resume_under_torchrun_and_across_world_sizes(text, tmp_path, reference, mode):
    run = tmp_path / "run"
    first = torchrun("train", *common(text, run, **{"--distributed": mode, "--max-steps": 3}))
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun("train", "--resume", str(run), "--max-steps", "6", "--no-progress")
    assert second.returncode == 0, second.stderr[-3000:]
    # the short first session adds an evaluation at its last step (3); the rest matches
    kept = [r for r in rows(run) if r["step"] != 3]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert_same_run(run, reference)
    # a torchrun checkpoint generates in one process
    gen = single("generate", "--checkpoint", str(run), "--prompt", "The", "--max-new-tokens", "4",
                 "--temperature", "0", "--device", "cpu")
    assert gen.returncode == 0, gen.stderr
    # and a single-process checkpoint resumes under torchrun (each rank now reads its own
    # batch, so the job's batch doubles: the losses go on from where they were, not identically)
    solo = tmp_path / "solo"
    assert single("train", *common(text, solo, **{"--max-steps": 3})).returncode == 0
    cont = torchrun("train", "--resume", str(solo), "--max-steps", "6", "--distributed", mode,
                    "--no-progress")
    assert cont.returncode == 0, cont.stderr[-3000:]
    history = rows(solo)
    assert [r["step"] for r in history] == [1, 2, 3, 4, 6]
    assert [r["tokens_seen"] for r in history] == [64, 128, 192, 320, 576]
    assert history[-1]["train_loss"] < history[2]["train_loss"]


@pytest.mark.slow
def test_a_dying_rank_brings_the_job_down(text, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gptforge", "train", *common(text, run, **{"--max-steps": 100000, "--eval-every": 1})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 600  # a bound for a stuck job, not a speed assumption
    while not ((run / "metrics.jsonl").exists() and len(rows(run)) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    rank1 = None
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"RANK=1" in environ and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ):
                if str(run).encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                    rank1 = int(pid)
    assert rank1 is not None
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # no hang: torchrun stops the other rank too
    assert proc.returncode != 0
    assert "Signal 9" in err or "SIGKILL" in err or "exitcode" in err


@pytest.mark.slow
def test_muon_under_ddp_and_fsdp_equals_one_process_and_resumes(text, tmp_path):
    """Muon with AdamW: DDP gives one process's run with accumulation; FSDP2 too (torch's Muon
    orthogonalises a sharded matrix as a whole: the DTensor matmuls gather what they need; only the
    bfloat16 rounding order differs); and a DDP run resumed mid-way is the uninterrupted one."""
    muon = {"--arch": "modern", "--optimizer": "muon", "--lr": 3e-3}
    reference = tmp_path / "ref"
    assert single("train", *common(text, reference, **muon, **{"--grad-accum": 2})).returncode == 0
    for mode in ("ddp", "fsdp"):
        r = torchrun("train", *common(text, tmp_path / mode, **muon, **{"--distributed": mode}))
        assert r.returncode == 0, r.stderr[-3000:]
        ra, rb = rows(tmp_path / mode), rows(reference)
        assert [r["step"] for r in ra] == [r["step"] for r in rb]
        tolerance = 1e-5 if mode == "ddp" else 1e-4
        for x, y in zip(ra, rb):
            assert abs(x["train_loss"] - y["train_loss"]) <= tolerance * abs(y["train_loss"]), (mode, x, y)
        assert ra[-1]["train_loss"] < ra[0]["train_loss"] - 0.05  # it trains
    resumed = tmp_path / "resumed"
    assert torchrun("train", *common(text, resumed, **muon, **{"--max-steps": 3})).returncode == 0
    second = torchrun("train", "--resume", str(resumed), "--max-steps", "6", "--no-progress")
    assert second.returncode == 0, second.stderr[-3000:]
    by_step = {r["step"]: r["train_loss"] for r in rows(resumed)}
    assert all(by_step[r["step"]] == r["train_loss"] for r in rows(tmp_path / "ddp"))  # bit for bit


# --- fine-tuning ---------------------------------------------------------------------------------

LORA = {"--lora-rank": 4, "--lora-dropout": 0.0}  # no dropout: each rank draws its own masks


def finetune_flags(base, data, out, lora, **extra):
    return flags({"--init-from": base, "--data": data / "chat.jsonl", "--batch-size": 2, "--lr": 1e-3,
                  "--eval-every": 2, "--eval-batches": 1, "--save-every": 3, "--max-steps": 6,
                  "--sample-tokens": 4, "--response-tokens": 4, "--seed": 1, "--device": "cpu", "--out": out,
                  **(LORA if lora else {}), **extra})


@pytest.fixture(scope="module", params=[False, True], ids=["full", "lora"])
def finetune_reference(request, tiny_checkpoint, finetune_data, tmp_path_factory):
    """One process, 2 examples x accumulation 2: what two ranks of 2 examples read together
    (data.example_batches deals batch k of an epoch to rank k mod 2)."""
    lora = request.param
    out = tmp_path_factory.mktemp("ft-ref") / "run"
    r = single("finetune", *finetune_flags(tiny_checkpoint, finetune_data, out, lora, **{"--grad-accum": 2}))
    assert r.returncode == 0, r.stderr
    return lora, out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_finetuning_in_two_processes_equals_one_with_accumulation(tiny_checkpoint, finetune_data, tmp_path,
                                                                    finetune_reference, mode):
    """Full and LoRA fine-tuning under DDP and FSDP2: the same losses, real (unpadded) token
    counts summed over ranks, weights and answers as one process (under FSDP the gradient clipping
    after the step-0 evaluation covers the root's parameters too); a run folder load_any reads,
    whose LoRA checkpoints hold the adapter only. The LoRA run under FSDP stops at step 3 and
    resumes under torchrun (load_lora, then the sharded optimizer state)."""
    lora, reference = finetune_reference
    run = tmp_path / "run"
    split = lora and mode == "fsdp"
    r = torchrun("finetune", *finetune_flags(tiny_checkpoint, finetune_data, run, lora, **{"--distributed": mode},
                                             **({"--max-steps": 3} if split else {})))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run folder:") == 1 and "x 2 processes" in r.stdout
    if split:
        r = torchrun("finetune", "--resume", str(run), "--max-steps", "6", "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
        kept = [row for row in rows(run) if row["step"] != 3]  # the first session's final evaluation
        (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))
    assert_same_run(run, reference)
    assert (run / RESPONSES).read_text() == (reference / RESPONSES).read_text()
    for checkpoint in (run / "checkpoints").iterdir():
        assert all(is_adapter_key(k) for k in load_file(checkpoint / "model.safetensors")) == lora
    ours, theirs = load_any(run), load_any(reference)
    ids = torch.randint(0, ours.config.vocab_size, (1, 12))
    torch.testing.assert_close(ours(ids), theirs(ids), rtol=0, atol=1e-4)
