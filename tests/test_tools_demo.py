"""The tool-calling demo: the `tools-cpu` recipe loads, a fine-tune on builtin:tools with it runs, and
benchmarks/tools_demo.py measures the result through the chat's tool loop."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from gptforge.training.config import FinetuneConfig
from gptforge.training.config_files import load_config_file
from gptforge.training.finetune import finetune
from gptforge.weights.checkpoint import save_checkpoint

from helpers import random_gpt

REPO = Path(__file__).resolve().parents[1]


def demo():
    spec = importlib.util.spec_from_file_location("tools_demo", REPO / "benchmarks" / "tools_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe(**fields) -> FinetuneConfig:
    return FinetuneConfig.from_dict({**load_config_file("tools-cpu", FinetuneConfig), **fields})


def test_the_tools_recipe_loads():
    cfg = recipe()
    assert cfg.records.data == "builtin:tools" and cfg.finetune.template == "chatml"
    assert cfg.model["context_length"] >= 1280  # the tool block alone is ~1,000 speedrun tokens
    assert cfg.lora.lora_rank is None


def call(name, arguments):
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


@pytest.mark.parametrize("calls, kind", [
    ([], "no tool"),
    ([call("calculator", {"expression": "48213 * 7719"})], "arithmetic"),
    ([call("calculator", {"expression": "12.5 * 2.54"})], "conversion"),
    ([call("weekday", {"date": "2001-03-14"})], "dates"),
    ([call("calculator", {"expression": "2 * 3"}), call("calculator", {"expression": "4 * 5"})], "parallel"),
])
def test_each_record_falls_in_its_category(calls, kind):
    messages = [{"role": "user", "content": "?"}]
    if calls:
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    assert demo().category(messages + [{"role": "assistant", "content": "!"}]) == kind


def test_the_test_split_has_every_category():
    module = demo()
    from gptforge.data.instructions import read_file

    kinds = Counter(module.category(e.messages) for e in read_file(module.TEST_SPLIT))
    assert set(kinds) == set(module.CATEGORIES) and sum(kinds.values()) == 150


def test_a_tiny_finetune_with_the_recipe_is_measured_through_the_tool_loop(tmp_path):
    """Two steps of the recipe on a tiny rotary model (its context of 128 stretched to the
    recipe's), then the demo's measurement on a few test records: every record is asked with its
    tools and without, and counted in its category."""
    base = save_checkpoint(tmp_path / "base", random_gpt(0, vocab_size=50257, context_length=128, arch="modern"))
    cfg = recipe(init_from=str(base), out=str(tmp_path / "run"), max_steps=2, batch_size=2, max_examples=8,
                 eval_batches=1, device="cpu")
    run = finetune(cfg, progress=False).run_dir
    module = demo()
    from gptforge.data.instructions import read_file
    from gptforge.weights import load_any

    result = module.measure(load_any(run), read_file(module.TEST_SPLIT, 4), max_new_tokens=6)
    table = result["categories"]
    assert result["records"] == sum(row["records"] for row in table.values()) == 4
    assert all(0 <= row["with_tools"] <= row["records"] and 0 <= row["without_tools"] <= row["records"]
               for row in table.values())
    assert all(shown.startswith("you> ") and "model> " in shown for shown in result["transcripts"].values())


# The scoring, with the model's replies scripted (the tiny run above cannot call anything yet).

ARITHMETIC = {"tools": None, "messages": [
    {"role": "user", "content": "What is 48213 * 7719?"},
    {"role": "assistant", "content": None, "tool_calls": [call("calculator", {"expression": "48213 * 7719"})]},
    {"role": "tool", "tool_call_id": "c", "content": "372156147"},
    {"role": "assistant", "content": "48213 * 7719 = 372156147."}]}
DIRECT = {"tools": None, "messages": [{"role": "user", "content": "Write rocket in capital letters."},
                                      {"role": "assistant", "content": "ROCKET"}]}
WRONG = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "48213 * 7718"}}\n</tool_call>'
CALC = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "48213 * 7719"}}\n</tool_call>'


def scripted_measure(monkeypatch, records, replies):
    """measure() on `records` with the model's replies scripted: (result, the ids each reply began from)."""
    from gptforge import chat
    from gptforge.data.instructions import parse_record
    from gptforge.tools.registry import builtin_tools

    module, prompts, script = demo(), [], iter(replies)

    def fake_stream(model, ids, *args, **kwargs):
        prompts.append(list(ids))
        yield next(script)

    monkeypatch.setattr(chat, "stream_text", fake_stream)
    monkeypatch.setattr(module, "stream_text", fake_stream)
    tools = [t.schema for t in builtin_tools("calculator,clock")]
    examples = [parse_record({**r, "tools": tools}, f"record {i}") for i, r in enumerate(records)]
    model = chat_model()
    return module.measure(model, examples), prompts, model


def chat_model():
    from gptforge.model.vocab import grow_vocabulary
    from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS, gpt2

    model = grow_vocabulary(random_gpt(0, vocab_size=50257, context_length=1024, arch="modern"), 50263,
                            gpt2().with_special_tokens(CHAT_TOKENS + TOOL_TOKENS)).eval()
    return model


def test_an_answer_counts_when_the_call_runs_and_the_answer_is_exact(monkeypatch):
    result, prompts, model = scripted_measure(monkeypatch, [ARITHMETIC], [CALC, "48213 * 7719 = 372156147.", "372156146."])
    assert result["categories"] == {"arithmetic": {"records": 1, "with_tools": 1, "without_tools": 0, "calls": 1,
                                                 "right_tools": 1, "exact_calls": 1}}
    text = model.tokenizer.decode
    assert "<tool_response>\n372156147\n</tool_response>" in text(prompts[1])  # the calculator's own result
    assert text(prompts[2]).endswith("<|im_start|>assistant\n48213 * 7719 = ")  # without tools: started for it
    assert "<tool_response>" not in text(prompts[2])
    assert "[tool] calculator" in result["transcripts"]["arithmetic"]


def test_an_inexact_answer_or_a_needless_call_does_not_count(monkeypatch):
    result, _, _ = scripted_measure(monkeypatch, [ARITHMETIC, ARITHMETIC, DIRECT, DIRECT],
                                    [CALC, "48213 * 7719 = 372156147", "372156147.",  # no final stop
                                     WRONG, "48213 * 7719 = 372156147.", "0.",  # right answer, wrong call
                                     CALC, "ROCKET",  # right, but it called the calculator for it
                                     "ROCKET"])
    assert result["categories"] == {
        "arithmetic": {"records": 2, "with_tools": 1, "without_tools": 1, "calls": 2, "right_tools": 2, "exact_calls": 1},
        "no tool": {"records": 2, "with_tools": 1, "without_tools": 1, "calls": 1, "right_tools": 1, "exact_calls": 1}}
