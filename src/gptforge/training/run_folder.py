"""The layout of a run folder, known here only:

    runs/NAME/
      config.json              the resolved model + training config, and the tokenizer's description
      tokenizer/               the run's tokenizer (tokenizer.json + meta.json) unless it is GPT-2's
      metrics.jsonl            one row per evaluation
      loss.png                 the loss curves, redrawn at each evaluation
      status.json              running / finished / interrupted / diverged / failed, and which process
      checkpoints/step-XXXXXXXX/  (see gptforge.weights.checkpoint)
      events.out.tfevents.*, log.csv, wandb/   with --log (see training.loggers)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import atomic_write, read_json, write_json
from ..tokenizer import TOKENIZER_DIR, Tokenizer
from ..weights.checkpoint import CHECKPOINTS, checkpoint_path, list_checkpoints, set_aside, verify_checkpoint

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
STATUS = "status.json"
STATES = ("running", "finished", "interrupted", "diverged", "failed")  # what status.json can say


def warn(message: str) -> None:
    """A line on stderr that leaves a progress bar intact."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class RunFolder:
    """One training run's folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file, self.metrics_file = self.path / CONFIG, self.path / METRICS
        self.plot_file, self.status_file = self.path / PLOT, self.path / STATUS
        self.verified: set[Path] = set()  # checkpoints found intact by this process (prune)

    def __str__(self) -> str:
        return str(self.path)

    def checkpoint(self, step: int) -> Path:
        return checkpoint_path(self.path, step)

    def checkpoints(self) -> list[Path]:
        """Its complete checkpoints, oldest first."""
        return list_checkpoints(self.path)

    def write_status(self, state: str, **details: Any) -> None:
        """Record what the run is doing (one of STATES) and which process says so: a process killed
        with SIGKILL cannot update this file, so a reader checks whether that process still lives
        (see process_alive) before believing "running"."""
        assert state in STATES, state
        pid = os.getpid()
        status = {"state": state, "pid": pid, "host": socket.gethostname(),
                  "process_started": process_start_time(pid), "updated": time.time(), **details}
        try:
            write_json(self.status_file, status)
        except OSError:
            # A full disk has no room for the replacement's temporary copy; a few hundred bytes
            # rewritten in place fit the blocks the old file holds. Not atomic, but the truth.
            if not self.status_file.is_file():
                raise
            with open(self.status_file, "r+b") as f:
                f.write((json.dumps(status, indent=2) + "\n").encode())
                f.truncate()

    def read_status(self) -> dict | None:
        """status.json's contents, or None when the run has none (or an unreadable one)."""
        try:
            status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

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

    def metrics_lines(self) -> list[tuple[bytes, int | None]]:
        """Each line of metrics.jsonl with its row's step, None for a line that is not a metrics row
        (a half-written last line, bytes that are not UTF-8 or not JSON)."""
        if not self.metrics_file.exists():
            return []
        lines = []
        for line in self.metrics_file.read_bytes().splitlines():
            try:
                step = json.loads(line.decode("utf-8"))["step"]
            except (UnicodeDecodeError, ValueError, KeyError, TypeError):
                step = None
            lines.append((line, step if is_number(step) else None))
        return lines

    def metrics_steps(self) -> list[int]:
        """The step of every readable metrics row, in file order."""
        return [step for _, step in self.metrics_lines() if step is not None]

    def truncate_metrics(self, step: int) -> None:
        """Drop the rows a crashed session wrote after the checkpoint we resume from, and the lines
        that are not metrics rows (said on stderr: they would stop every reader)."""
        lines = self.metrics_lines()
        if not lines:
            return
        bad = [n for n, (line, s) in enumerate(lines, 1) if s is None and line.strip()]
        if bad:
            warn(f"warning: {self.metrics_file}: dropped {len(bad)} unreadable line(s) (line "
                 f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})")
        atomic_write(self.metrics_file, b"".join(line + b"\n" for line, s in lines if s is not None and s <= step))

    def remove_stale_temporaries(self) -> None:
        """Half-written checkpoint folders left by a killed process are never read; tidy them."""
        for stale in (self.path / CHECKPOINTS).glob(".step-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def prune(self, keep: int, protect: tuple[Path | None, ...] = ()) -> None:
        """Keep the newest `keep` intact checkpoints and the `protect`ed ones (the one this run
        resumed from, the one it wrote last; they count as intact); delete the older ones.
        A checkpoint that fails verification does not count: it is set aside as step-N.corrupt
        (see set_aside), never deleted. Incomplete folders are left for inspection."""
        protected = {Path(p) for p in protect if p is not None}
        kept = 0
        for checkpoint in reversed(self.checkpoints()):
            if checkpoint in protected:
                kept += 1
            elif kept < max(keep, 1):
                if self._intact(checkpoint):
                    kept += 1
                else:
                    set_aside(checkpoint, warn)
            else:
                shutil.rmtree(checkpoint, ignore_errors=True)

    def _intact(self, checkpoint: Path) -> bool:
        """Whether a checkpoint passes verify_checkpoint, each one hashed once by this process."""
        if checkpoint not in self.verified:
            try:
                verify_checkpoint(checkpoint)
            except UserError as e:
                warn(f"warning: {e}")
                return False
            self.verified.add(checkpoint)
        return True


def parse_metrics(file: Path) -> tuple[list[dict], list[int]]:
    """A metrics.jsonl's rows, in file order, and the line numbers of lines that are not a metrics
    row (a half-written last line, what a crash mid-write leaves, is left out of both)."""
    lines = Path(file).read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    rows, bad = [], []
    for k, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)  # json reads NaN, which json.dumps writes for a NaN loss
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and all(is_number(row.get(key)) for key in ("step", "epoch", "tokens_seen")):
            rows.append(row)
        elif k < len(numbered) - 1:
            bad.append(lineno)
    return rows, bad


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_or_none(value: Any) -> float | None:
    """A metrics value as a finite float, or None (null, NaN, inf, not a number)."""
    return float(value) if is_number(value) and math.isfinite(value) else None


def process_start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux /proc; None elsewhere). With the
    pid it names one process: a pid alone may be reused by another one later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces


def process_alive(status: dict) -> bool | None:
    """Whether the process a status names still runs: None when it ran on another host (unknowable
    from here), else True or False."""
    if status.get("host") != socket.gethostname():
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    started = status.get("process_started")
    return started is None or process_start_time(pid) in (None, started)
