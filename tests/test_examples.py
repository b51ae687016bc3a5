"""The learner-facing scripts in examples/ run as shipped."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import gptforge

EXAMPLES = Path(__file__).parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_example_here(name: str, *args: str) -> str:
    """The script run as __main__ in this process (no new Python and torch to start): its stdout."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


@pytest.mark.slow  # a minute of training, in its own process as a learner runs it
@pytest.mark.timeout(1200)
def test_the_minimal_training_loop_learns():
    out = run_example("train_minimal.py")
    val = [float(v) for v in re.findall(r"val loss (\d+\.\d+)", out)]
    assert len(val) >= 3 and val[0] > 10.0  # untrained: about ln(50257) = 10.8
    assert val[-1] < val[0] - 2.0, out
    assert "ROMEO.\n" in out


def test_the_generation_example_matches_the_library(tiny_checkpoint):
    out = run_example_here("generate.py", str(tiny_checkpoint))
    model = gptforge.load_any(tiny_checkpoint)
    ids = gptforge.generate(model, gptforge.text_to_ids("Every effort moves you"), 10, temperature=0)
    assert f"greedy: {gptforge.ids_to_text(ids)}\n" in out
    assert f"{model.num_params():,} parameters" in out
