"""Classification fine-tuning through the shared loop: a tiny model learns which bundled corpus a
passage comes from, resume is bitwise exact, what trains is what was asked, the command-line
workflow (finetune, eval, classify, convert) and bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gptforge.evaluate.classify import evaluate_classifier
from gptforge.training.config import FinetuneConfig
from gptforge.training.finetune import finetune
from gptforge.weights import load_any

from helpers import assert_user_error, run_cli_here

DATA = "builtin:sources"


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def settings(base, out, **fields):
    return {"init_from": str(base), "data": DATA, "task": "classify", "out": str(out), "batch_size": 16,
            "lr": 1e-3, "context_length": 64, "eval_every": 10, "save_every": 10, "device": "cpu", "seed": 1,
            **fields}


def test_a_tiny_model_learns_which_corpus_a_passage_comes_from(tiny_checkpoint, tmp_path):
    result = finetune(FinetuneConfig.of(**settings(tiny_checkpoint, tmp_path / "run", max_steps=20)), progress=False)
    history = rows(result.run_dir)
    assert history[0]["step"] == 0 and history[-1]["step"] == 20
    last = history[-1]
    assert last["val_accuracy"] >= 0.95 and last["val_macro_f1"] >= 0.95
    assert sum(map(sum, last["val_confusion"])) == 60  # the whole val set (10% of 600)
    meta = json.loads((result.checkpoint / "config.json").read_text())
    assert meta["classifier"] == {"classes": ["shakespeare", "tasks"], "pad_id": 50256}
    pytest.importorskip("matplotlib")
    assert (result.run_dir / "confusion.png").stat().st_size > 0
    # the checkpoint scores the same on the bundled set through `eval --task classify`'s function
    assert evaluate_classifier(str(result.run_dir), DATA)["accuracy"] >= 0.95


@pytest.mark.slow  # three short runs each
@pytest.mark.parametrize("how", [{"trainable": "head"}, {"trainable": "last", "train_blocks": 1},
                                 {"lora_rank": 2, "balance": "weights"}])
def test_resume_is_bitwise_exact_and_only_the_chosen_weights_train(tiny_checkpoint, tmp_path, how):
    fields = {**settings(tiny_checkpoint, None, eval_every=2, save_every=3, dropout=0.1, balance="sample"), **how}
    straight = finetune(FinetuneConfig.of(**{**fields, "out": str(tmp_path / "a")}, max_steps=6), progress=False)
    finetune(FinetuneConfig.of(**{**fields, "out": str(tmp_path / "b")}, max_steps=4), progress=False)
    resumed = finetune(resume=tmp_path / "b", max_steps=6, progress=False)
    strip = lambda history: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in history]
    assert strip(rows(resumed.run_dir)) == strip(rows(straight.run_dir))
    a = load_file(straight.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(tiny_checkpoint / "model.safetensors")
    if "lora_rank" in how:  # the adapter and the head only
        assert "score.weight" in a and all("lora_" in k or k == "score.weight" for k in a)
        return
    changed = {k for k in base if not torch.equal(base[k], a[k])}
    assert all(k.startswith(("blocks.1.", "final_norm.")) for k in changed)
    assert bool(changed) == (how["trainable"] == "last")


def test_the_workflow_on_the_command_line(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    r = run_cli_here("finetune", "--task", "classify", "--init-from", str(tiny_checkpoint), "--data", DATA,
                     "--out", str(run), "--lora-rank", "4", "--lr", "3e-3", "--batch-size", "16", "--max-steps", "12",
                     "--context-length", "64", "--eval-every", "6", "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2-class classifier" in r.stdout and "LoRA rank 4" in r.stdout and "val accuracy" in r.stdout
    r = run_cli_here("eval", "--task", "classify", "--checkpoint", str(run), "--data", DATA, "--json")
    assert r.returncode == 0, r.stderr
    scored = json.loads(r.stdout)
    assert scored["examples"] == 600 and scored["accuracy"] > 0.6  # 12 steps of LoRA: learning, not learnt
    predictions = tmp_path / "predictions.jsonl"
    r = run_cli_here("classify", "--checkpoint", str(run), "--data", DATA, "--out", str(predictions))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(lines) == 600 and set(lines[0]) == {"text", "true_label", "label", "probabilities"}
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-4
    accuracy = sum(row["label"] == row["true_label"] for row in lines) / len(lines)
    assert accuracy == pytest.approx(scored["accuracy"])
    r = run_cli_here("classify", "--checkpoint", str(run), "What is 2 plus 3?", "O Romeo, Romeo!")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    # the merged LoRA classifier, exported, gives our logits in transformers
    transformers = pytest.importorskip("transformers")
    assert run_cli_here("convert", "--to-hf", str(run), "--out", str(tmp_path / "hf")).returncode == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 50256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(load_any(run)(ids), hf(ids).logits, rtol=1e-4, atol=1e-5)
    assert_user_error(run_cli_here("generate", "--checkpoint", str(run), "--prompt", "hi"), "is a classifier")
    assert_user_error(run_cli_here("convert", "--to-gguf", str(run), "--out", str(tmp_path / "c.gguf")),
                      "a classifier does not export to GGUF")
    assert_user_error(run_cli_here("convert", "--to-peft", str(run), "--out", str(tmp_path / "peft")),
                      "is a classifier's adapter")
    assert_user_error(run_cli_here("classify", "--checkpoint", str(tiny_checkpoint), "hi"), "not a classifier")
    assert_user_error(run_cli_here("classify", "--checkpoint", str(run), "--data", DATA, "--out",
                                   str(tmp_path / "nowhere" / "p.jsonl")), "no such folder")


BAD = {
    "nocolumn.csv": ("words,label\nhello,a\nbye,b\n", "record 1 has no text column"),
    "empty.jsonl": ('{"text": "a", "label": "x"}\n{"text": "", "label": "y"}\n', "record 2: the text"),
    "oneclass.jsonl": ("".join(f'{{"text": "t{i}", "label": "x"}}\n' for i in range(20)),
                       "every training record has the label 'x'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_data_is_one_line_naming_the_file_and_writes_nothing(tiny_checkpoint, tmp_path, name):
    content, message = BAD[name]
    (tmp_path / name).write_text(content)
    r = run_cli_here("finetune", "--task", "classify", "--init-from", str(tiny_checkpoint), "--data",
                     str(tmp_path / name), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert_user_error(r, message)
    assert str(tmp_path / name) in r.stderr
    assert not (tmp_path / "run").exists()


def test_lora_with_another_trainable_choice_is_refused(tiny_checkpoint, tmp_path):
    r = run_cli_here("finetune", "--task", "classify", "--init-from", str(tiny_checkpoint), "--data", DATA,
                     "--lora-rank", "2", "--trainable", "head", "--out", str(tmp_path / "run"))
    assert_user_error(r, "drop --trainable head")
    assert not (tmp_path / "run").exists()


def test_the_bundled_recipe_loads():
    from gptforge.training.config_files import load_config_file

    cfg = FinetuneConfig.from_dict(load_config_file("classify-cpu", FinetuneConfig))
    assert cfg.classify.task == "classify" and cfg.records.data == "builtin:genres"
    assert cfg.classify.balance == "weights"
