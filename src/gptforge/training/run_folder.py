"""The layout of a run folder, known here only:

    runs/NAME/
      config.json              the resolved model + training config, and the tokenizer's description
      tokenizer/               the run's tokenizer (tokenizer.json + meta.json) unless it is GPT-2's
      metrics.jsonl            one row per evaluation
      loss.png                 the loss curves, redrawn at each evaluation
      checkpoints/step-XXXXXXXX/  (see gptforge.weights.checkpoint)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write, read_json, write_json
from ..tokenizer import TOKENIZER_DIR, Tokenizer
from ..weights.checkpoint import CHECKPOINTS, checkpoint_path, list_checkpoints

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PLOT = "loss.png"


class RunFolder:
    """One training run's folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def plot_file(self) -> Path:
        return self.path / PLOT

    def checkpoint(self, step: int) -> Path:
        return checkpoint_path(self.path, step)

    def checkpoints(self) -> list[Path]:
        """Its complete checkpoints, oldest first."""
        return list_checkpoints(self.path)

    def holds_a_run(self) -> bool:
        return (self.path / CHECKPOINTS).exists() or self.metrics_file.exists()

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.path}: {e.strerror or e}") from None

    def write_config(self, resolved: dict, tokenizer: Tokenizer) -> None:
        """config.json, and the tokenizer's files next to it (the run is self-contained)."""
        tokenizer.save(self.path / TOKENIZER_DIR)
        write_json(self.config_file, {**resolved, "tokenizer": tokenizer.describe()})

    def read_config(self) -> dict:
        return read_json(self.config_file)

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics_steps(self) -> list[int]:
        """The step of every complete metrics row, in file order (a half-written last line ends it)."""
        steps = []
        if self.metrics_file.exists():
            for line in self.metrics_file.read_text().splitlines():
                try:
                    steps.append(json.loads(line)["step"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    break
        return steps

    def truncate_metrics(self, step: int) -> None:
        """Drop the rows a crashed session wrote after the checkpoint we resume from."""
        if not self.metrics_file.exists():
            return
        lines = self.metrics_file.read_text().splitlines()
        kept = [line for line, s in zip(lines, self.metrics_steps()) if s <= step]
        atomic_write(self.metrics_file, "".join(line + "\n" for line in kept))

    def remove_stale_temporaries(self) -> None:
        """Half-written checkpoint folders left by a killed process are never read; tidy them."""
        for stale in (self.path / CHECKPOINTS).glob(".step-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` complete checkpoints; incomplete folders are left for
        inspection, and the newest complete one is never deleted."""
        for old in self.checkpoints()[:-max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
