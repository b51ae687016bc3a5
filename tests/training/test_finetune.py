"""Fine-tuning through the shared loop: masked loss, full and LoRA runs, exact resume, the files a
run leaves, and bad input."""

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptforge.data.example_batches import IGNORE, ExampleBatches
from gptforge.data.instructions import read_examples
from gptforge.data.templates import alpaca_prompt, encode_example, encode_examples
from gptforge.errors import UserError
from gptforge.evaluate import batch_loss
from gptforge.model.vocab import grow_vocabulary
from gptforge.tokenizer import CHAT_TOKENS, gpt2
from gptforge.training.config import FinetuneConfig
from gptforge.training.finetune import RESPONSES, finetune
from gptforge.weights import load_any

from helpers import assert_user_error, random_gpt, run_cli, run_cli_here, wait_for


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def strip(history):
    """metrics.jsonl rows without their wall-clock times."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in history]


def settings(base, data_file, out, **fields):
    return {"init_from": str(base), "data": str(data_file), "out": str(out), "batch_size": 4, "lr": 1e-3,
            "eval_every": 2, "eval_batches": 1, "save_every": 3, "device": "cpu", "sample_tokens": 6,
            "response_tokens": 8, "seed": 1, **fields}


# --- the loss covers only the answers -------------------------------------------------------

def test_masked_positions_contribute_nothing():
    """Changing the target of a prompt position changes no gradient; changing an answer's does;
    and the loss equals a plain re-computation over the answer positions."""
    model = grow_vocabulary(random_gpt(0, vocab_size=50257, context_length=128), 50259).eval()
    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS)
    example = read_examples("builtin:tasks-chat")[0][0]
    ids, loss = (np.array(a) for a in encode_example(example, tokenizer, "chatml"))
    batches = ExampleBatches([(ids, loss)], 1)
    inputs, targets, _ = batches.collate(np.array([0]))

    def grads(targets):
        model.zero_grad()
        batch_loss(model, inputs, targets).backward()
        return [p.grad.clone() for p in model.parameters()]

    reference = grads(targets)
    prompt_positions = [j for j in range(1, len(ids)) if not loss[j]]
    answer_positions = [j for j in range(1, len(ids)) if loss[j]]
    assert len(prompt_positions) > 10 and len(answer_positions) >= 4
    for j in prompt_positions[::5]:  # a different token there, in the target role only
        changed = ExampleBatches([(np.where(np.arange(len(ids)) == j, 7, ids), loss)], 1).collate(np.array([0]))[1]
        assert torch.equal(changed, targets)
        assert all(torch.equal(a, b) for a, b in zip(grads(changed), reference))
    j = answer_positions[0]
    changed = targets.clone()
    changed[0, j - 1] = 7
    assert not all(torch.equal(a, b) for a, b in zip(grads(changed), reference))
    # the loss is the mean of -log p(answer token) over the answer positions, and nothing else
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs)[0], dim=-1)
        expected = -torch.stack([logp[j - 1, ids[j]] for j in answer_positions]).mean()
        torch.testing.assert_close(batch_loss(model, inputs, targets), expected)
    assert (targets[0] != IGNORE).sum() == len(answer_positions)
    # --train-on-prompt: every position is trained
    [(all_ids, all_loss)], _, _ = encode_examples([example], tokenizer, "chatml", 128, train_on_prompt=True)
    everything = ExampleBatches([(all_ids, all_loss)], 1).collate(np.array([0]))[1]
    assert torch.equal(everything[0], torch.from_numpy(ids[1:]))


# --- runs --------------------------------------------------------------------------------------

@pytest.mark.slow  # a fine-tuning run that learns
def test_a_full_run_learns_the_format_and_leaves_everything(tiny_checkpoint, finetune_data, tmp_path):
    cfg = FinetuneConfig.of(**settings(tiny_checkpoint, finetune_data / "tasks.json", tmp_path / "run", epochs=3, lr=3e-3,
                                    lr_schedule="cosine", warmup_steps=2))
    result = finetune(cfg, progress=False)
    history = rows(result.run_dir)
    assert history[0]["step"] == 0 and history[1]["step"] == 1  # before fine-tuning, then each evaluation
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 1.0  # a random tiny model: it learns slowly
    steps_per_epoch = (54 // 4)  # 60 records, 6 for validation
    assert result.step == 3 * steps_per_epoch
    # the schedule: warmup, then cosine to 0
    assert history[1]["lr"] == pytest.approx(cfg.optim.lr / 2) and history[-1]["lr"] < cfg.optim.lr / 10
    checkpoint = result.checkpoint
    meta = json.loads((checkpoint / "config.json").read_text())
    assert meta["model"]["vocab_size"] == 50259
    assert set(CHAT_TOKENS) <= set(meta["tokenizer"]["special_tokens"])
    assert "lora" not in meta and (result.run_dir / "loss.png").exists()
    responses = [json.loads(line) for line in (result.run_dir / RESPONSES).read_text().splitlines()]
    assert len(responses) == 6 and set(responses[0]) == {"instruction", "input", "output", "response"}
    model = load_any(result.run_dir)
    assert model.tokenizer.special_tokens["<|im_end|>"] == 50258


@pytest.mark.slow  # two fine-tuning runs and a resume
@pytest.mark.parametrize("lora", [False, True])
def test_resume_is_bitwise_exact(tiny_checkpoint, finetune_data, tmp_path, lora):
    extra = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.1} if lora else {}
    fields = settings(tiny_checkpoint, finetune_data / "chat.jsonl", None, dropout=0.1, eval_every=1, **extra)
    straight = finetune(FinetuneConfig.of(**{**fields, "out": str(tmp_path / "a")}, max_steps=8), progress=False)
    finetune(FinetuneConfig.of(**{**fields, "out": str(tmp_path / "b")}, max_steps=4), progress=False)
    resumed = finetune(resume=tmp_path / "b", max_steps=8, progress=False)
    assert strip(rows(resumed.run_dir)) == strip(rows(straight.run_dir))
    a = load_file(straight.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all("lora_" in k or k.endswith("new_rows") for k in a) == lora


@pytest.mark.slow  # processes and Ctrl-C
def test_ctrl_c_checkpoints_and_resume_ends_like_an_uninterrupted_run(tiny_checkpoint, finetune_data, tmp_path):
    """SIGINT to `gptforge finetune` mid-run (LoRA, dropout on, so the RNG state matters): exit 0
    with a checkpoint of the step it stopped at and the status "interrupted", no responses yet;
    --resume then ends bit for bit where a run that was never interrupted does."""
    fields = settings(tiny_checkpoint, finetune_data / "chat.jsonl", tmp_path / "straight", batch_size=2,
                      eval_every=5, save_every=0, max_steps=20, sample_tokens=2, response_tokens=6, lora_rank=4,
                      lora_dropout=0.1, dropout=0.1)
    straight = finetune(FinetuneConfig.of(**fields), progress=False).run_dir  # in this process: no start-up

    run = tmp_path / "run"
    flags = [x for k, v in {**fields, "out": run}.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "finetune", *flags, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2)  # steps 0 and 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"Resume with: gptforge finetune --resume {run}" in out
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and 1 <= status["step"] < 20
    checkpoint = run / "checkpoints" / f"step-{status['step']:08d}"
    assert all("lora_" in k or k.endswith("new_rows") for k in load_file(checkpoint / "model.safetensors"))
    assert not (run / RESPONSES).exists()  # written only by a run that reaches its end

    r = run_cli("finetune", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert strip(rows(run)) == strip(rows(straight))
    a = load_file(straight / "checkpoints" / "step-00000020" / "model.safetensors")
    b = load_file(run / "checkpoints" / "step-00000020" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / RESPONSES).read_text() == (straight / RESPONSES).read_text()


def test_bf16_accumulation_and_truncation(tiny_checkpoint, finetune_data, tmp_path, capsys):
    cfg = FinetuneConfig.of(**settings(tiny_checkpoint, finetune_data / "tasks.json", tmp_path / "run", batch_size=2,
                                    grad_accum=2, dtype="bfloat16", max_steps=6, template="alpaca",
                                    context_length=52))
    result = finetune(cfg, progress=False)
    # the examples longer than 53 ids (inputs and the last target) are counted, and those whose
    # answer starts beyond the cut are left out
    tokenizer = gpt2()
    records = json.loads((finetune_data / "tasks.json").read_text())
    prompts = [len(tokenizer.encode(alpaca_prompt(r))) for r in records]
    totals = [len(tokenizer.encode(alpaca_prompt(r) + r["output"])) + 1 for r in records]
    cut, left_out = sum(n > 53 for n in totals), sum(n >= 53 for n in prompts)
    assert cut > left_out > 0
    said = capsys.readouterr().out
    assert f"{cut} example(s) longer than the context were cut to it, {left_out} of them left out" in said
    history = rows(result.run_dir)
    assert result.step == 6 and all(math.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert json.loads((result.checkpoint / "config.json").read_text())["model"]["vocab_size"] == 50257


@pytest.mark.slow  # the workflow as CLI processes
def test_the_lora_workflow_on_the_command_line(tiny_checkpoint, finetune_data, tmp_path):
    run = tmp_path / "run"
    r = run_cli("finetune", "--init-from", str(tiny_checkpoint), "--data", str(finetune_data / "chat.jsonl"),
                "--out", str(run), "--lora-rank", "4", "--lr", "3e-3", "--batch-size", "4", "--max-steps", "6",
                "--eval-every", "3", "--response-tokens", "6", "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "trainable (LoRA rank 4 on qkv,attn_out,mlp_in,mlp_out)" in r.stdout
    assert (run / RESPONSES).exists()
    checkpoint = run / "checkpoints" / "step-00000006"
    assert json.loads((checkpoint / "config.json").read_text())["lora"]["rank"] == 4
    merged = tmp_path / "merged"
    r = run_cli("convert", "--merge-lora", str(run), "--out", str(merged))
    assert r.returncode == 0, r.stderr
    idx = torch.randint(0, 50259, (1, 10))
    torch.testing.assert_close(load_any(merged)(idx), load_any(run)(idx), rtol=0, atol=1e-5)
    assert run_cli("convert", "--to-peft", str(run), "--out", str(tmp_path / "peft")).returncode == 0
    assert (tmp_path / "peft" / "adapter_config.json").exists()
    r = run_cli("generate", "--checkpoint", str(run), "--chat", "--prompt", "What is 2 plus 3?",
                "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # a plain checkpoint is not an adapter
    assert_user_error(run_cli("convert", "--merge-lora", str(merged), "--out", str(tmp_path / "m2")),
                      "is not a LoRA checkpoint")


BAD_DATA = {
    "no-output.json": ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', 'record 2 has no "output"'),
    "last-turn.jsonl": ('{"messages": [{"role": "user", "content": "hi"}]}\n', "the last message is the user's"),
    "role.jsonl": ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
                   "has role 'robot'"),
    "empty.jsonl": ("", "holds no records"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path, name):
    content, message = BAD_DATA[name]
    (tmp_path / name).write_text(content)
    r = run_cli_here("finetune", "--init-from", str(tiny_checkpoint), "--data", str(tmp_path / name),
                "--out", str(tmp_path / "run"), "--device", "cpu")
    assert_user_error(r, message)
    assert str(tmp_path / name) in r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_settings_are_one_line(tiny_checkpoint, finetune_data, tmp_path):
    common = ["--data", str(finetune_data / "tasks.json"), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert_user_error(run_cli_here("finetune", "--init-from", str(tiny_checkpoint), "--lora-rank", "0", *common),
                      "lora-rank must be")
    assert_user_error(run_cli_here("finetune", "--init-from", str(tiny_checkpoint), "--lora-targets", "c_attn", *common),
                      "unknown LoRA target(s) c_attn")
    assert_user_error(run_cli_here("finetune", *common), "finetune needs --init-from")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="stride is a pretraining setting"):
        FinetuneConfig.of(stride=4)


def test_a_lora_run_refuses_another_base_on_resume(finetune_data, tmp_path):
    from gptforge.weights.checkpoint import save_checkpoint

    base = save_checkpoint(tmp_path / "base", random_gpt(0, vocab_size=50257, context_length=64))
    fields = settings(base, finetune_data / "tasks.json", tmp_path / "run", lora_rank=2, max_steps=2)
    finetune(FinetuneConfig.of(**fields), progress=False)
    save_checkpoint(base, random_gpt(1, vocab_size=50257, context_length=64))  # another model in its place
    r = run_cli_here("finetune", "--resume", str(tmp_path / "run"), "--max-steps", "4")
    assert_user_error(r, "is a LoRA adapter for another base model")
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 1


def test_the_bundled_recipes_load():
    from gptforge.training.config_files import load_config_file

    lora, full = (FinetuneConfig.from_dict(load_config_file(name, FinetuneConfig))
                  for name in ("tasks-lora", "tasks-full"))
    assert lora.records.data == full.records.data == "builtin:tasks"
    assert lora.finetune.template == full.finetune.template == "chatml"
    assert lora.lora.lora_rank and full.lora.lora_rank is None


def test_tool_records_grow_the_vocabulary_by_the_tool_markers_and_train(tmp_path):
    """Fine-tuning on records with tools adds the chat and tool-call tokens to the base's
    vocabulary (and the template trains on the calls): a chat with tools is then possible."""
    from gptforge.tokenizer import TOOL_TOKENS, tokenizer_of
    from gptforge.weights.checkpoint import save_checkpoint

    base = save_checkpoint(tmp_path / "base", random_gpt(0, vocab_size=50257, context_length=256))
    tool = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    record = {"tools": [tool], "messages": [
        {"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"}, {"role": "assistant", "content": "5"}]}
    data = tmp_path / "tools.jsonl"
    data.write_text("\n".join(json.dumps(record) for _ in range(8)) + "\n")
    cfg = FinetuneConfig.of(**settings(base, data, tmp_path / "run", max_steps=1, response_tokens=0,
                                       val_fraction=0.25))
    result = finetune(cfg, progress=False)
    tokenizer = tokenizer_of(load_any(result.run_dir))
    assert all(name in tokenizer.special_tokens for name in CHAT_TOKENS + TOOL_TOKENS)
    assert load_any(result.run_dir).config.vocab_size >= tokenizer.vocab_size == 50257 + len(CHAT_TOKENS + TOOL_TOKENS)
