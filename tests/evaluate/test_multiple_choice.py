"""Multiple-choice scoring against independent references: a plain re-computation, transformers on
the exported model, lm-evaluation-harness itself (its hellaswag task, pointed at our fixture), a
model that knows the answers, and a random one."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.evaluate.multiple_choice import (
    choice_metrics,
    encode_request,
    evaluate_choice,
    score_items,
)
from gptforge.evaluate.tasks import ChoiceItem, clean_hellaswag, read_items
from gptforge.model import GPT
from gptforge.tokenizer import gpt2
from gptforge.weights import load_any
from gptforge.weights.hf import export_hf

from helpers import assert_user_error, run_cli_here

GPT2 = gpt2()
EOT_ID = GPT2.eot_id
FIXTURE = Path(__file__).parent / "hellaswag_sample.jsonl"  # 24 items we wrote, in HellaSwag's format


@pytest.fixture(scope="module")
def items():
    return read_items(FIXTURE, "hellaswag")


@pytest.fixture(scope="module")
def random_model(tiny_checkpoint):
    return load_any(tiny_checkpoint)  # gpt2-tiny, GPT-2's vocabulary, context 64


@pytest.fixture(scope="module")
def exported(random_model, tmp_path_factory):
    return export_hf(random_model, tmp_path_factory.mktemp("hf") / "export")


def plain_logprob(model: GPT, context: list[int], continuation: list[int]) -> float:
    """Context + continuation run alone, cropped on the left to the model's window; log_softmax in
    float64 and the continuation's tokens summed."""
    L = model.config.context_length
    whole = (context + continuation)[-(L + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].double(), dim=-1)
    n = min(len(continuation), len(whole) - 1)
    targets = torch.tensor(whole[1:])
    return float(logp[torch.arange(len(whole) - 1), targets][-n:].sum())


def test_hellaswag_cleaning_matches_lm_eval(items):
    """Our reading of the fixture equals lm-evaluation-harness's own hellaswag process_docs."""
    datasets = pytest.importorskip("datasets")
    from lm_eval.tasks.hellaswag.utils import process_docs

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    theirs = process_docs(datasets.Dataset.from_list(rows))
    assert [item.context for item in items] == theirs["query"]
    assert [item.choices for item in items] == theirs["choices"]
    assert [item.label for item in items] == theirs["gold"]
    assert any("[" in e for row in rows for e in row["endings"])  # the fixture exercises the cleaning
    assert clean_hellaswag(" Stir it. [title] Serve. [step] Eat  it. ") == "Stir it.. Serve. Eat it."


def test_mc_task_takes_the_file_as_it_is():
    items = read_items(FIXTURE, "mc", limit=3)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()[:3]]
    assert [(i.context, i.choices, i.label) for i in items] == [(r["ctx"], r["endings"], r["label"]) for r in rows]


def test_requests_are_tokenized_as_the_harness_does():
    enc = GPT2.encode
    assert encode_request(GPT2, "The cat", " sat down.") == (enc("The cat"), enc(" sat down."))
    # trailing spaces of the context move to the continuation
    assert encode_request(GPT2, "The cat ", " sat") == (enc("The cat"), enc("The cat  sat")[len(enc("The cat")):])
    assert encode_request(GPT2, "", " sat") == ([EOT_ID], enc(" sat"))  # an empty context is <|endoftext|>


def test_batched_scores_equal_a_plain_recomputation(random_model, items):
    """Every grouping (one item per batch, three, all) gives each choice's plain log-likelihood;
    with a 64-token model an item longer than the window is cropped. The fixture's last 8 items
    (the recomputation is the cost) hold its one longer item."""
    items = items[-8:]
    expected = []
    for item in items:
        pairs = [encode_request(GPT2, item.context, " " + choice) for choice in item.choices]
        expected.append([plain_logprob(random_model, c, cont) for c, cont in pairs])
    assert any(len(c) + len(cont) > 65 for item in items
               for c, cont in [encode_request(GPT2, item.context, " " + ch) for ch in item.choices])
    for batch_size in (1, 3, 64):
        got = score_items(random_model, items, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow  # transformers on the exported folder
def test_scores_equal_transformers_on_the_exported_model(random_model, items, exported):
    """transformers' GPT-2 on the exported folder, with transformers' tokenizer, gives the same
    per-choice log-likelihoods (the harness's tokenization rule, applied with its tokenizer)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    L = model.config.n_positions
    theirs = []
    for item in items:
        context_ids = tokenizer.encode(item.context)
        row = []
        for choice in item.choices:
            continuation = tokenizer.encode(item.context + " " + choice)[len(context_ids):]
            whole = (context_ids + continuation)[-(L + 1):]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
            n = min(len(continuation), len(whole) - 1)
            row.append(float(logp[torch.arange(len(whole) - 1), torch.tensor(whole[1:])][-n:].sum()))
        theirs.append(row)
    np.testing.assert_allclose(score_items(random_model, items), theirs, atol=1e-4, rtol=0)


def test_metrics_are_acc_and_length_normalised_acc_with_standard_errors():
    items = [ChoiceItem("q", ["a", "bbbbbbbbbb"], 1), ChoiceItem("q", ["cc", "d"], 0),
             ChoiceItem("q", ["e", "f", "g"], 2), ChoiceItem("q", ["hhhh", "i"], 0)]
    scores = [[-2.0, -5.0],  # acc picks 0 (wrong); per character 1 wins (right)
              [-1.0, -3.0],  # both pick 0 (right)
              [-1.0, -2.0, -3.0],  # both pick 0 (wrong)
              [-3.0, -2.0]]  # acc picks 1 (wrong); per character 0 wins (right)
    m = choice_metrics(items, scores)
    assert (m["acc"], m["acc_norm"], m["items"]) == (0.25, 0.75, 4)
    assert m["acc_stderr"] == pytest.approx(statistics.stdev([0, 1, 0, 0]) / 2)
    assert m["acc_norm_stderr"] == pytest.approx(statistics.stdev([1, 1, 0, 1]) / 2)


@pytest.fixture(scope="module")
def memorised(items):
    """gpt2-tiny trained (a plain loop) on the right ending of every fixture item: a stream of
    <|endoftext|> + context + " " + right ending, 80 full-batch steps (acc reaches 1 at ~60)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", context_length=128), gpt2())
    enc = GPT2.encode
    stream = [t for item in items for t in [EOT_ID] + enc(item.context + " " + item.choices[item.label])]
    rows = len(stream) // 128 + 1
    stream = torch.tensor(stream + [EOT_ID] * (rows * 128 + 1 - len(stream)))
    x, y = stream[:-1].view(rows, 128), stream[1:].view(rows, 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(80):
        loss = model(x, targets=y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1.0
    return model.eval()


@pytest.mark.slow  # its fixture trains for a minute
def test_a_model_that_knows_the_answers_scores_1(memorised, items):
    m = choice_metrics(items, score_items(memorised, items, batch_size=4))
    assert m["acc"] == 1.0 and m["acc_norm"] == 1.0 and m["acc_stderr"] == 0.0


@pytest.mark.slow  # 400 items through GPT-2's 50257-wide head
def test_a_random_model_scores_near_chance(random_model):
    """400 four-way items whose endings are drawn from one pool: a random model is at chance."""
    rng = random.Random(0)
    words = GPT2.decode(list(range(1000, 3000))).split()
    phrase = lambda n: " ".join(rng.choice(words) for _ in range(n))
    items = [ChoiceItem(phrase(rng.randint(5, 15)), [phrase(rng.randint(3, 8)) for _ in range(4)], rng.randrange(4))
             for _ in range(400)]
    m = choice_metrics(items, score_items(random_model, items, batch_size=32))
    sigma = math.sqrt(0.25 * 0.75 / 400)
    assert abs(m["acc"] - 0.25) < 3.5 * sigma and abs(m["acc_norm"] - 0.25) < 3.5 * sigma, m


def lm_eval_task(folder: Path, data: Path) -> str:
    """A task YAML as docs/evaluate.md's recipe writes it: lm-evaluation-harness's own hellaswag task
    (its cleaning, prompt and metrics) reading a local JSONL file."""
    import lm_eval

    hellaswag = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hellaswag_local.yaml").write_text(
        f"include: {hellaswag}\ntask: hellaswag_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\ntraining_split: null\n"
        f"validation_split: validation\n")
    return "hellaswag_local"


@pytest.mark.slow
def test_acc_and_log_likelihoods_equal_lm_eval(random_model, items, exported, tmp_path):
    """`lm_eval --model hf` on the exported model, offline, on the fixture: the same acc and
    acc_norm, and every per-choice log-likelihood within 1e-4."""
    pytest.importorskip("lm_eval")
    task = lm_eval_task(tmp_path / "tasks", FIXTURE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={exported}",
               "--tasks", task, "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
               "--batch_size", "8", "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"][task]
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob(f"samples_{task}_*.jsonl")).open()]
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]

    ours = score_items(random_model, items)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    m = choice_metrics(items, ours)
    assert m["acc"] == results["acc,none"] and m["acc_norm"] == results["acc_norm,none"]
    assert m["acc_stderr"] == pytest.approx(results["acc_stderr,none"])
    assert m["acc_norm_stderr"] == pytest.approx(results["acc_norm_stderr,none"])


def test_cli_scores_a_checkpoint(tiny_checkpoint, random_model, items):
    done = run_cli_here("eval", "--checkpoint", str(tiny_checkpoint), "--task", "hellaswag", "--data", str(FIXTURE),
                   "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {**choice_metrics(items, score_items(random_model, items)), "task": "hellaswag",
                      "checkpoint": str(tiny_checkpoint), "data": str(FIXTURE), "chance": 0.25}
    text = run_cli_here("eval", "--checkpoint", str(tiny_checkpoint), "--task", "mc", "--data", str(FIXTURE),
                   "--limit", "5", "--device", "cpu")
    assert text.returncode == 0 and "acc_norm" in text.stdout and "5 items" in text.stdout, text.stderr


@pytest.mark.parametrize("line, fragment", [
    ("not json", "not a hellaswag item"),
    ('{"ctx": "a", "endings": ["b", "c"]}', "missing field 'label'"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 2}', "'label' must be an index into the 2 endings"),
    ('{"ctx": "a", "endings": "b", "label": 0}', "'endings' must be a list"),
])
def test_a_bad_line_is_one_clear_error(tmp_path, line, fragment):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(FIXTURE.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(UserError, match=f"bad.jsonl:2: .*{fragment}"):
        read_items(bad, "hellaswag")


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 7}\n')
    assert_user_error(run_cli_here("eval", "--checkpoint", str(tiny_checkpoint), "--task", "hellaswag",
                              "--data", str(bad)), "bad.jsonl:1: not a hellaswag item")


def test_missing_and_empty_files_are_user_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(UserError, match="no such benchmark file"):
        evaluate_choice(tiny_checkpoint, tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="holds no items"):
        read_items(tmp_path / "empty.jsonl")
