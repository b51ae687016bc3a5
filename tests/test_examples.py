"""The learner-facing scripts in examples/ run as shipped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gptforge

EXAMPLES = Path(__file__).parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_minimal_training_loop_learns():
    out = run_example("train_minimal.py")
    val = [float(v) for v in re.findall(r"val loss (\d+\.\d+)", out)]
    assert len(val) >= 3 and val[0] > 10.0  # untrained: about ln(50257) = 10.8
    assert val[-1] < val[0] - 2.0, out
    assert "ROMEO.\n" in out


def test_the_generation_example_matches_the_library(tiny_checkpoint):
    out = run_example("generate.py", str(tiny_checkpoint))
    model = gptforge.load_any(tiny_checkpoint)
    ids = gptforge.generate(model, gptforge.text_to_ids("Every effort moves you"), 10, temperature=0)
    assert f"greedy: {gptforge.ids_to_text(ids)}\n" in out
    assert f"{model.num_params():,} parameters" in out
