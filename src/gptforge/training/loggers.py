"""Where a run's curves go besides metrics.jsonl and loss.png: TensorBoard, Weights & Biases or a CSV
file (`--log tensorboard|wandb|csv`, repeatable).

The Trainer calls one `LogHub` with plain Python numbers: the training scalars at every host sync,
the evaluation losses, the samples as text; the resolved config goes in once per session as
hyperparameters. Only rank 0 logs. A resumed run continues the same curves: each logger drops
what the killed session logged after the checkpoint the run resumes from (TensorBoard's
purge_step, the CSV rewritten), and the loggers are flushed before every checkpoint, so nothing up
to a checkpoint is lost by a kill. Watching never stops training: a logger that fails mid-run is
dropped with one warning.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import math
import secrets
from pathlib import Path
from typing import Any, Callable, Protocol

from tqdm import tqdm

from ..errors import UserError, first_line
from ..files import atomic_write
from .run_folder import RunFolder

CSV_FILE = "log.csv"  # rows of (step, name, value); a sample's value is its text
WANDB_ID_FILE = Path("wandb") / "gptforge-run-id"  # the W&B run id, kept across resumed sessions
# --log target -> (the module it needs, the pip extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class Logger(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def text(self, step: int, name: str, text: str) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def check_packages(targets: tuple[str, ...]) -> None:
    """Refuse, in one line naming what to install, a --log target whose package is missing (before
    the run starts)."""
    for target in targets:
        module, extra = PACKAGES.get(target, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"--log {target} needs the {module} package: pip install 'gptforge[{extra}]'")


def open_loggers(targets: tuple[str, ...], run: RunFolder, start_step: int, config: dict,
                 wandb_project: str) -> LogHub:
    """The loggers of a session that starts after `start_step` (0 for a new run)."""
    check_packages(targets)
    makers: dict[str, Callable[[], Logger]] = {
        "tensorboard": lambda: TensorBoardLogger(run.path, start_step, config),
        "wandb": lambda: WandbLogger(run.path, start_step, config, wandb_project),
        "csv": lambda: CsvLogger(run.path / CSV_FILE, start_step),
    }
    return LogHub([makers[target]() for target in targets])


class LogHub:
    """The run's loggers, called as one. Values that are None (a split the run does not have) are
    left out."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def __len__(self) -> int:
        return len(self.loggers)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        present = {k: float(v) for k, v in values.items() if v is not None}
        self._each(lambda logger: logger.scalars(step, present))

    def text(self, step: int, name: str, text: str) -> None:
        self._each(lambda logger: logger.text(step, name, text))

    def flush(self) -> None:
        self._each(lambda logger: logger.flush())

    def close(self) -> None:
        self._each(lambda logger: logger.close())
        self.loggers = []

    def _each(self, call: Callable[[Logger], None]) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as e:  # a full disk, a lost connection: training goes on without it
                self.loggers.remove(logger)
                tqdm.write(f"note: {type(logger).__name__} stopped: {first_line(e)}")


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train/lr": 1e-3}, every value a number, bool or string."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "/"))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class TensorBoardLogger:
    """Event files in the run folder itself, so `tensorboard --logdir runs` lists every run by name."""

    def __init__(self, folder: Path, start_step: int, config: dict):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: TensorBoard hides what an earlier session wrote from this step on (that
        # session was killed after the checkpoint this one resumes from).
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1, flush_secs=10)
        writer = self.writer._get_file_writer()  # what add_hparams does, minus its extra sub-folder
        for summary in hparams(flat_config(config), {"eval/val_loss": math.nan, "eval/train_loss": math.nan}):
            writer.add_summary(summary)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.add_text(name, "    " + text.replace("\n", "\n    "), global_step=step)  # as code: verbatim

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run through wandb's own client, resumed under the same id by a resumed run. W&B's own
    settings apply (WANDB_MODE=offline keeps it on disk for `wandb sync`; WANDB_ENTITY...)."""

    def __init__(self, folder: Path, start_step: int, config: dict, project: str):
        import wandb

        id_file = folder / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        try:
            self.run = wandb.init(project=project, name=folder.resolve().name, id=run_id, resume="allow",
                                  dir=str(folder), config=config, allow_val_change=True)
        except Exception as e:
            raise UserError(f"W&B could not start: {first_line(e)} (log in with `wandb login`, or set "
                            f"WANDB_MODE=offline)") from None
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        self.wandb = wandb
        # W&B's history only moves forward; what it holds past the checkpoint is the same run's
        # (exact resume recomputes the same losses), so steps it has seen are not sent again.
        self.first_step = max(start_step + 1, self.run.step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step >= self.first_step:
            self.run.log(values, step=step)

    def text(self, step: int, name: str, text: str) -> None:
        if step >= self.first_step:
            self.run.log({name: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def flush(self) -> None:
        pass  # wandb's client writes its own records as they come

    def close(self) -> None:
        self.run.finish()


class CsvLogger:
    """RUN/log.csv in long form, one row per value: step,name,value (a sample's value is its text).
    Rows after the step a session resumes from are dropped first."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        kept = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                kept = [row for row in list(csv.reader(f))[1:] if _step(row) is not None and _step(row) <= start_step]
        header = io.StringIO()
        csv.writer(header).writerows([("step", "name", "value"), *kept])
        atomic_write(path, header.getvalue())
        self.file = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.writer.writerows((step, name, repr(value)) for name, value in values.items())
        self.file.flush()

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.writerow((step, name, text))
        self.file.flush()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _step(row: list[str]) -> int | None:
    try:
        return int(row[0])
    except (IndexError, ValueError):
        return None
