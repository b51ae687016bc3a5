"""Preference tuning (DPO): the loss and rewards against TRL's and a plain re-computation, a tiny
model learning a rule, LoRA's first step against full fine-tuning's, the reference modes, bad data,
and exact resume."""

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from gptforge.data.example_batches import IGNORE
from gptforge.data.preferences import parse_preference
from gptforge.model.lora import LoRALinear, add_lora
from gptforge.tokenizer import tokenizer_of
from gptforge.training.config import FinetuneConfig
from gptforge.training.finetune import RESPONSES, finetune, initial_finetune_model
from gptforge.training.preference import REFERENCE, PreferenceTask, answer_logps, dpo_loss
from gptforge.weights import load_any

from helpers import assert_user_error, run_cli_here

WORDS = ("apple river stone garden window yellow summer bread candle forest little market silver orange "
         "pencil rabbit winter castle tiger paper").split()
COLOURS = ("red", "blue", "green")


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def strip(history):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in history]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def preferences(n=24):
    """Records whose chosen answer is a colour in capitals and the rejected one the same in lower case."""
    return [{"prompt": f"Say {w}", "chosen": COLOURS[i % 3].upper(), "rejected": COLOURS[i % 3]}
            for i, w in enumerate(WORDS[:n])]


def settings(base, data, out, **fields):
    return {"init_from": str(base), "data": str(data), "out": str(out), "method": "dpo", "batch_size": 4,
            "lr": 1e-3, "eval_every": 2, "eval_batches": 1, "save_every": 3, "device": "cpu", "sample_tokens": 4,
            "response_tokens": 4, "seed": 1, **fields}


@pytest.fixture(scope="module")
def chat_model(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with the chat tokens (as a fine-tuned chat model has them)."""
    from gptforge.weights.checkpoint import save_checkpoint

    cfg = FinetuneConfig.of(init_from=str(tiny_checkpoint), data="builtin:tasks", device="cpu")
    model = initial_finetune_model(cfg, torch.device("cpu"), [parse_preference(preferences(1)[0], "x")])
    return save_checkpoint(tmp_path_factory.mktemp("chat") / "checkpoint", model)


def task_and_batch(model, records, tmp_path, reference="per-batch", **fields):
    cfg = FinetuneConfig.of(init_from="unused", data="unused", method="dpo", batch_size=4, device="cpu",
                            reference=reference, **fields)
    prefs = [parse_preference(r, f"r{i}") for i, r in enumerate(records)]
    task = PreferenceTask(cfg, model, prefs, prefs[:4], SimpleNamespace(rank=0, world_size=1, is_main=True))
    return task, next(iter(task.val.batches(0)))


# --- the loss and rewards -------------------------------------------------------------------


def per_token_logps(model, inputs, targets):
    """(2B, L) log-probability of each answer token, 0 elsewhere: log_softmax and gather."""
    logp = torch.log_softmax(model(inputs).double(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return torch.where(targets != IGNORE, picked, torch.zeros_like(picked))


def trl_dpo(per_token, mask, ref_chosen, ref_rejected, beta):
    """TRL's DPOTrainer._compute_loss (sigmoid loss, precomputed reference log-probs) on a minimal
    trainer object whose model returns the given per-token log-probs: (loss, its logged metrics)."""
    pytest.importorskip("trl")
    from trl import DPOTrainer

    N, L = per_token.shape
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(N, L), mean_logits=torch.zeros(N, L),
                              is_top1=torch.zeros(N, L, dtype=torch.bool))
    identity = lambda x: x  # noqa: E731  one process: gathering changes nothing
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False), beta=beta, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], use_weighting=False,
        aux_loss_enabled=False, accelerator=SimpleNamespace(device="cpu", gather=identity, gather_for_metrics=identity),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    completion_mask = torch.cat([torch.zeros(N, 1, dtype=torch.long), mask.long()], dim=1)  # TRL shifts it by one
    inputs = {"input_ids": torch.zeros(N, L + 1, dtype=torch.long), "attention_mask": torch.ones(N, L + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["eval"].items()}


def test_the_loss_and_rewards_equal_trls_and_a_plain_recomputation(chat_model, tmp_path):
    model = load_any(chat_model).eval()
    records = [{"prompt": f"Say {w}", "chosen": f"the {w} is here", "rejected": w} for w in WORDS[:8]]
    task, (inputs, targets, _) = task_and_batch(model, records, tmp_path, beta=0.3)
    B = len(inputs) // 2
    with torch.no_grad():
        per_token = per_token_logps(model, inputs, targets.ids)
        torch.manual_seed(0)  # a reference near the model, so that some rewards come out either way
        targets.reference = per_token.sum(dim=1).float() + torch.randn(2 * B) * 2
        loss, logps, r_chosen, r_rejected = task.pair_stats(model, inputs, targets)

    # Plain: each answer's summed token log-probabilities, then -log sigmoid(beta * (ratio difference)).
    sums = per_token.sum(dim=1)
    torch.testing.assert_close(logps.double(), sums, rtol=1e-5, atol=1e-4)
    ref = targets.reference.double()
    plain = [-math.log(1 / (1 + math.exp(-0.3 * ((sums[i] - ref[i]) - (sums[B + i] - ref[B + i])).item())))
             for i in range(B)]
    assert loss.item() == pytest.approx(sum(plain) / B, rel=1e-5)
    torch.testing.assert_close(r_chosen.double(), 0.3 * (sums[:B] - ref[:B]), rtol=1e-5, atol=1e-5)

    trl_loss, metrics = trl_dpo(per_token.float(), targets.ids != IGNORE, ref[:B].float(), ref[B:].float(), 0.3)
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    assert r_chosen.mean().item() == pytest.approx(metrics["rewards/chosen"], rel=1e-5, abs=1e-6)
    assert r_rejected.mean().item() == pytest.approx(metrics["rewards/rejected"], rel=1e-5, abs=1e-6)
    assert (r_chosen - r_rejected).mean().item() == pytest.approx(metrics["rewards/margins"], rel=1e-5, abs=1e-6)
    assert (r_chosen > r_rejected).float().mean().item() == metrics["rewards/accuracies"]
    assert 0 < metrics["rewards/accuracies"] < 1  # the comparison was not decided by the reference alone
    assert logps[:B].mean().item() == pytest.approx(metrics["logps/chosen"], rel=1e-5)


def test_dpo_loss_at_the_reference_is_log_2_and_falls_as_chosen_rises():
    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    loss, rc, rr = dpo_loss(c, r, c, r, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and torch.equal(rc, torch.zeros(2))
    assert dpo_loss(c + 1, r, c, r, beta=0.1)[0] < loss < dpo_loss(c, r + 1, c, r, beta=0.1)[0]


def test_answer_logps_cover_only_the_last_answer(chat_model):
    """A prompt with an earlier assistant turn: only the last answer's tokens are scored."""
    model = load_any(chat_model).eval()
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
              {"role": "user", "content": "Say apple"}]
    records = [{"messages": prompt, "chosen": "RED", "rejected": "red"}] * 4
    task, (inputs, targets, _) = task_and_batch(model, records, None)
    tokenizer = tokenizer_of(model)
    for row in targets.ids:
        scored = tokenizer.decode([t for t in row.tolist() if t != IGNORE])
        assert scored in ("RED<|im_end|>", "red<|im_end|>")
    with torch.no_grad():
        assert torch.allclose(answer_logps(model, inputs, targets.ids),
                              per_token_logps(model, inputs, targets.ids).sum(1).float(), atol=1e-4)


# --- the reference: cached, per batch, LoRA's adapter off ----------------------------------------


def test_the_reference_modes_agree_and_lora_turns_its_adapter_off(chat_model, tmp_path):
    records = preferences(8)
    model = load_any(chat_model).eval()
    cached, _ = task_and_batch(model, records, tmp_path, reference="cached")
    cached.cache_reference(tmp_path, resumed=False, autocast=torch.autocast("cpu", enabled=False))
    inputs, targets, _ = next(iter(cached.val.batches(0)))
    per_batch, (_, fresh, _) = task_and_batch(model, records, tmp_path)
    assert fresh.reference is None
    reference = per_batch.reference_logps(inputs, targets.ids)
    torch.testing.assert_close(targets.reference, reference, rtol=1e-5, atol=1e-4)
    assert load_file(tmp_path / REFERENCE)["train"].shape == (8, 2)

    add_lora(model, rank=2, alpha=4.0, dropout=0.0, targets=("qkv", "mlp_out"))
    with torch.no_grad():  # as after training: the adapter changes the model
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.5)
        assert not torch.allclose(answer_logps(model, inputs, targets.ids), reference, atol=1e-3)
    lora_task, _ = task_and_batch(model, records, tmp_path)
    torch.testing.assert_close(lora_task.reference_logps(inputs, targets.ids), reference, rtol=1e-5, atol=1e-4)


def test_lora_dpo_takes_full_dpos_first_step_direction(chat_model):
    """With A = I (rank = width), the merged update of a LoRA layer is scale * B, so at the start
    (B = 0) the DPO gradient wrt B is scale times full fine-tuning's gradient wrt that weight."""
    records = [{"prompt": f"Say {w}", "chosen": f"the {w}", "rejected": w} for w in WORDS[:8]]
    full = load_any(chat_model).eval()  # no dropout: both gradients are exact
    task, (inputs, targets, _) = task_and_batch(full, records, None)
    task.reference_model = load_any(chat_model)  # a frozen copy, as --reference per-batch makes
    task.loss(full, inputs, targets).backward()

    lora = load_any(chat_model).eval()
    width = lora.config.emb_dim
    add_lora(lora, rank=width, alpha=2.0 * width, dropout=0.0, targets=("qkv", "attn_out"))
    with torch.no_grad():
        for m in lora.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.copy_(torch.eye(width))
    lora_task, _ = task_and_batch(lora, records, None)  # reference: the same model, adapter off
    lora_task.loss(lora, inputs, targets).backward()

    compared = 0
    for name, m in lora.named_modules():
        if isinstance(m, LoRALinear):
            assert m.lora_B.grad.abs().max() > 0
            torch.testing.assert_close(m.lora_B.grad, m.scaling * full.get_submodule(name).weight.grad,
                                       rtol=1e-4, atol=1e-6)
            compared += 1
    assert compared == 2 * full.config.n_layers


# --- a tiny model learns a rule ------------------------------------------------------------------


@pytest.mark.slow  # two fine-tuning runs
def test_a_tiny_chat_model_learns_to_prefer_answers_in_capitals(tiny_checkpoint, tmp_path):
    """SFT on answers in capitals half the time, then DPO on pairs where the chosen answer is in
    capitals: the reward accuracy on held-out prompts nears 1 and the held-out greedy answers are
    in capitals more often than before."""
    sft = [{"messages": [{"role": "user", "content": f"Say {w}"},
                         {"role": "assistant", "content": COLOURS[j % 3].upper() if i % 2 else COLOURS[j % 3]}]}
           for i, (j, w) in enumerate(list(enumerate(WORDS)) * 4)]
    common = dict(device="cpu", batch_size=8, eval_batches=2, save_every=0, response_tokens=4, sample_tokens=4,
                  seed=1, eval_every=0)
    chat = finetune(FinetuneConfig.of(init_from=str(tiny_checkpoint), data=str(write_jsonl(tmp_path / "sft.jsonl", sft)),
                                      out=str(tmp_path / "sft"), lr=3e-3, epochs=8, **common), progress=False)
    prefs = preferences(20)
    train, held_out = write_jsonl(tmp_path / "train.jsonl", prefs[:14] * 2), write_jsonl(tmp_path / "val.jsonl", prefs[14:])
    run = finetune(FinetuneConfig.of(init_from=str(chat.run_dir), data=str(train), val_data=str(held_out),
                                     out=str(tmp_path / "dpo"), method="dpo", beta=0.5, lr=1e-3, epochs=5, **common),
                   progress=False)
    first, last = rows(run.run_dir)[0], rows(run.run_dir)[-1]
    assert first["val_reward_margin"] == 0 and last["val_reward_accuracy"] >= 0.9
    assert last["val_logp_chosen"] > first["val_logp_chosen"]
    answers = [json.loads(line) for line in (run.run_dir / RESPONSES).read_text().splitlines()]
    capitals = lambda key: sum(a[key].isupper() for a in answers)  # noqa: E731
    assert len(answers) == 6 and capitals("after") > capitals("before")


# --- bad data, and exact resume --------------------------------------------------------------------

BAD = {
    "no-chosen.jsonl": ({"prompt": "Say apple", "rejected": "red"}, 'has no "chosen"'),
    "same.jsonl": ({"prompt": "Say apple", "chosen": "red", "rejected": "red"}, "are the same answer"),
    "long.jsonl": ({"prompt": "Say " + "apple " * 200, "chosen": "RED", "rejected": "red"}, "longer than the model's context"),
    "no-prompt.jsonl": ({"chosen": "RED", "rejected": "red"}, 'has no "prompt"'),
    "assistant-last.jsonl": ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                              "chosen": "a", "rejected": "b"}, "continue a user's turn"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_preference_data_is_one_line_naming_file_and_record(chat_model, tmp_path, name):
    record, message = BAD[name]
    path = write_jsonl(tmp_path / name, preferences(3) + [record])
    r = run_cli_here("finetune", "--method", "dpo", "--init-from", str(chat_model), "--data", str(path),
                     "--out", str(tmp_path / "run"), "--device", "cpu")
    assert_user_error(r, message)
    assert f"{path} record 4" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two short runs and a resume, each
@pytest.mark.parametrize("lora", [False, True])
def test_dpo_resume_is_bitwise_exact(chat_model, tmp_path, lora):
    """Full DPO with the cached reference, LoRA DPO with the per-batch one (adapter off)."""
    extra = {"lora_rank": 2, "lora_dropout": 0.1, "reference": "per-batch"} if lora else {"dropout": 0.1}
    data = write_jsonl(tmp_path / "prefs.jsonl", preferences(20))
    fields = settings(chat_model, data, None, eval_every=1, **extra)
    straight = finetune(FinetuneConfig.of(**{**fields, "out": str(tmp_path / "a")}, max_steps=6), progress=False)
    finetune(FinetuneConfig.of(**{**fields, "out": str(tmp_path / "b")}, max_steps=3), progress=False)
    resumed = finetune(resume=tmp_path / "b", max_steps=6, progress=False)
    assert strip(rows(resumed.run_dir)) == strip(rows(straight.run_dir))
    assert {"val_reward_accuracy", "train_reward_margin", "val_logp_chosen"} <= set(rows(straight.run_dir)[-1])
    a, b = (load_file(r.checkpoint / "model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight.run_dir / RESPONSES).read_text() == (resumed.run_dir / RESPONSES).read_text()
    assert (straight.run_dir / REFERENCE).exists() != lora


def test_the_bundled_recipe_and_set_load():
    from gptforge.data.instructions import read_examples
    from gptforge.training.config_files import load_config_file

    cfg = FinetuneConfig.from_dict(load_config_file("dpo-cpu", FinetuneConfig))
    assert cfg.preference.method == "dpo" and cfg.records.data == "builtin:tasks-preferences"
    train, _ = read_examples(cfg.records.data, parse=parse_preference)
    assert len(train) == 300 and all(p.chosen != p.rejected for p in train)
