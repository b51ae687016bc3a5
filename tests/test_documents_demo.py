"""The documents demo: scripts/make_documents.py writes the bundled builtin:documents set again,
byte for byte; its test questions are on held-out facts (never asked in training, their documents
in the knowledge base); the `documents-cpu` recipe loads and fine-tunes on it; the index finds
the held-out questions' documents."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from gptforge.data.instructions import read_examples
from gptforge.training.config import FinetuneConfig
from gptforge.training.config_files import load_config_file
from gptforge.training.finetune import finetune
from gptforge.weights.checkpoint import save_checkpoint

from helpers import random_gpt, run_cli

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "gptforge" / "corpora" / "documents"


def script():
    spec = importlib.util.spec_from_file_location("make_documents", REPO / "scripts" / "make_documents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_script_writes_the_bundled_set_again(tmp_path):
    script().main(["--out", str(tmp_path)])
    written, bundled = files(tmp_path), files(BUNDLED)
    assert len(bundled) == 1920 + 4
    assert written.keys() == bundled.keys()
    assert [name for name in bundled if written[name] != bundled[name]] == []


def test_held_out_questions_are_never_asked_in_training():
    train, val = read_examples("builtin:documents")
    asked = {e.messages[-2]["content"] for e in train + val}
    tests = jsonl(BUNDLED / "test-qa.jsonl")
    assert len(tests) >= 200 and not asked & {r["question"] for r in tests}
    # nor are their documents' facts: no training question names a held-out document's entity
    held_out = {r["relevant"][0] for r in jsonl(BUNDLED / "test-qrels.jsonl")}
    titles = [(BUNDLED / "docs" / p).read_text().splitlines()[0].removeprefix("# ") for p in held_out]
    assert not [t for t in titles if any(t in q for q in asked)]
    assert all((BUNDLED / "docs" / p).is_file() for p in held_out)  # the documents are in the knowledge base


def test_training_records_carry_retrieved_passages_and_answer_from_them_citing_one():
    train, _ = read_examples("builtin:documents")
    made = script()
    for example in train:
        assert len(example.context) == made.K
        assert all((BUNDLED / p["source"].rsplit(":", 1)[0]).is_file() for p in example.context)
        answer = example.messages[-1]["content"]
        if answer != made.MISSING:
            words, cited = re.fullmatch(r"(.+) \[(\d+)\]", answer).groups()
            assert words in example.context[int(cited) - 1]["text"]


def recipe(**fields) -> FinetuneConfig:
    return FinetuneConfig.from_dict({**load_config_file("documents-cpu", FinetuneConfig), **fields})


def test_the_documents_recipe_loads_and_fine_tunes(tmp_path):
    cfg = recipe()
    assert cfg.records.data == "builtin:documents" and cfg.finetune.template == "chatml"
    assert cfg.model["context_length"] >= 220  # a passage, the question and the answer: up to ~210 tokens
    base = save_checkpoint(tmp_path / "base", random_gpt(0, vocab_size=50257, context_length=128, arch="modern"))
    run = finetune(recipe(init_from=str(base), out=str(tmp_path / "run"), max_steps=2, batch_size=2,
                          max_examples=8, eval_batches=1, sample_every=0, device="cpu"), progress=False)
    assert run.step == 2 and run.checkpoint.is_dir()


@pytest.mark.slow
def test_the_index_finds_the_held_out_questions_documents(tmp_path):
    added = run_cli("index", "add", str(BUNDLED / "docs"), "--index", str(tmp_path / "kb"), "--no-progress")
    assert added.returncode == 0, added.stderr
    result = run_cli("eval", "--task", "retrieval", "--index", str(tmp_path / "kb"), "--data",
                     str(BUNDLED / "test-qrels.jsonl"), "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recall@5"] >= 0.9
