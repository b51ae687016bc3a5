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
    result = demo().measure(str(run), limit=4, max_new_tokens=6)
    table = result["categories"]
    assert result["records"] == sum(row["records"] for row in table.values()) == 4
    assert all(0 <= row["with_tools"] <= row["records"] and 0 <= row["without_tools"] <= row["records"]
               for row in table.values())
    assert all(shown.startswith("you> ") and "model> " in shown for shown in result["transcripts"].values())
