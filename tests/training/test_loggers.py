"""--log tensorboard / csv / wandb, read back with each tool's own reader: every value at the right
step, once, also after kill -9 and --resume."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gptforge.training.loggers as loggers
from gptforge.errors import UserError
from gptforge.training import train
from gptforge.training.config import TrainConfig
from gptforge.training.optim import lr_factor
from gptforge.training.runs import summarize_run

from helpers import assert_user_error, run_cli_here

TRAIN_TAGS = ["train/grad_norm", "train/loss", "train/lr", "train/mfu", "train/skipped_updates",
              "train/tokens_per_s", "train/tokens_seen"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def config(text, out, **fields):
    base = dict(data=str(text), preset="gpt2-tiny", context_length=32, batch_size=2, lr=1e-3,
                lr_schedule="cosine", warmup_steps=3, eval_every=5, eval_batches=1, save_every=10,
                sample_every=10, sample_tokens=5, device="cpu", out=str(out))
    return TrainConfig.of(**{**base, **fields})


def read_tensorboard(run: Path):
    """tensorboard's own reader over the run folder (every event file in it, purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar_steps(acc, tag) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def logged_run(text, tmp_path_factory):
    cfg = config(text, tmp_path_factory.mktemp("logged") / "run", max_steps=25, log=("tensorboard", "csv"))
    return cfg, train(cfg, progress=False)


def test_tensorboard_holds_every_scalar_at_its_step(logged_run):
    cfg, result = logged_run
    acc = read_tensorboard(result.run_dir)
    assert set(TRAIN_TAGS) <= set(acc.Tags()["scalars"])
    # the host syncs: every 10 steps, at each evaluation (step 1, every 5) and the last step
    syncs = sorted({1, 25} | set(range(5, 26, 5)))
    for tag in TRAIN_TAGS:
        assert scalar_steps(acc, tag) == syncs, tag
    value = lambda tag: {e.step: e.value for e in acc.Scalars(tag)}
    assert value("train/lr") == pytest.approx({s: cfg.optim.lr * lr_factor(s - 1, cfg.optim, 25) for s in syncs}, rel=1e-6)
    assert value("train/tokens_seen") == {s: s * 2 * 32 for s in syncs}
    assert set(value("train/skipped_updates").values()) == {0.0}
    assert all(math.isfinite(v) and v > 0 for tag in ("train/grad_norm", "train/tokens_per_s", "train/mfu")
               for v in value(tag).values())
    # the evaluations: the same numbers as metrics.jsonl (float32 in the event file)
    metrics = rows(result.run_dir)
    for key in ("train_loss", "val_loss", "val_bpb"):
        assert value(f"eval/{key}") == pytest.approx({r["step"]: r[key] for r in metrics}, rel=1e-6)
    assert [r["step"] for r in metrics] == [1, 5, 10, 15, 20, 25]
    bpb = metrics[-1]["val_bpb"]
    assert 0.5 < metrics[-1]["val_loss"] / math.log(2) / bpb < 10  # tokens of a few bytes each


def test_tensorboard_holds_the_samples_and_the_config(logged_run):
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    cfg, result = logged_run
    acc = read_tensorboard(result.run_dir)
    samples = acc.Tensors("sample/text_summary")
    assert [e.step for e in samples] == [10, 20]
    text = tensor_util.make_ndarray(samples[0].tensor_proto).item().decode()
    assert cfg.eval.sample_prompt in text
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train/lr"].number_value == cfg.optim.lr
    assert hparams["train/data"].string_value == cfg.corpus.data
    assert hparams["model/n_layers"].number_value == 2
    assert hparams["train/log"].string_value == "tensorboard,csv"


def test_csv_holds_the_same_values(logged_run):
    _, result = logged_run
    acc = read_tensorboard(result.run_dir)
    with open(result.run_dir / "log.csv", newline="") as f:
        table = list(csv.DictReader(f))
    for tag in TRAIN_TAGS + ["eval/val_loss"]:
        mine = [(int(r["step"]), float(r["value"])) for r in table if r["name"] == tag]
        assert mine == [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)], tag
    assert [int(r["step"]) for r in table if r["name"] == "sample"] == [10, 20]


def test_a_missing_package_is_one_line_before_the_run_exists(text, tmp_path, monkeypatch):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(UserError, match=r"--log wandb needs the wandb package: pip install 'gptforge\[wandb\]'"):
        train(config(text, tmp_path / "run", max_steps=2, log=("csv", "wandb")), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_failing_logger_is_dropped_and_training_goes_on(text, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}

    def broken(self, step, values):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers.CsvLogger, "scalars", broken)
    result = train(config(text, tmp_path / "run", max_steps=6, log=("csv",)), progress=False)
    assert result.step == 6 and calls["n"] == 1
    assert "CsvLogger stopped: [Errno 28] No space left on device" in capsys.readouterr().out


def test_log_flag_repeats_and_checks_its_choices():
    from gptforge.cli import build_parser

    args = build_parser().parse_args(["train", "--log", "tensorboard", "--log", "csv"])
    assert TrainConfig.of(log=args.log).logging.log == ("tensorboard", "csv")
    assert TrainConfig.of(log=["csv", "csv"]).logging.log == ("csv",)  # a config file's list
    with pytest.raises(UserError, match="log takes tensorboard, wandb, csv, got 'mlflow'"):
        TrainConfig.of(log=("mlflow",))
    assert_user_error(run_cli_here("train", "--log", "mlflow"), "invalid choice: 'mlflow'")


def newest_checkpoint_step(run: Path) -> int:
    done = [p for p in (run / "checkpoints").glob("step-*") if (p / "config.json").exists()]
    return max((int(p.name[5:]) for p in done), default=0)


def event_steps(file: Path, tag: str) -> list[int]:
    """The steps `tag` has in one event file, raw (no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [e.step for e in EventFileLoader(str(file)).Load()
            if e.HasField("summary") and any(v.tag == tag for v in e.summary.value)]


@pytest.mark.slow
def test_kill_9_and_resume_continue_the_curves_without_duplicates(text, tmp_path):
    """SIGKILL mid-run (after some events past the newest checkpoint reached the disk), --resume,
    until the run finishes: tensorboard's reader shows each step once, and the evaluations at
    exactly the steps and values of metrics.jsonl; the CSV too."""
    args = ["--data", str(text), "--preset", "gpt2-tiny", "--context-length", "32", "--batch-size", "2",
            "--lr", "1e-3", "--eval-every", "2", "--eval-batches", "1", "--save-every", "6",
            "--max-steps", "60", "--device", "cpu", "--no-progress", "--log", "tensorboard", "--log", "csv"]
    cli = [sys.executable, "-m", "gptforge", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run, purged = tmp_path / "run", 0
    for attempt in range(6):
        command = cli + (["--resume", str(run), "--no-progress"] if attempt else args + ["--out", str(run)])
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if purged >= 2 or attempt == 5:
            break
        files_before = set(run.glob("events.out.tfevents.*"))
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            mine = set(run.glob("events.out.tfevents.*")) - files_before
            checkpoint = newest_checkpoint_step(run)
            if mine and checkpoint and max(event_steps(mine.pop(), "eval/val_loss") or [0]) > checkpoint:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        assert summarize_run(run).status == "interrupted"  # its status file still says running
        session = (set(run.glob("events.out.tfevents.*")) - files_before).pop()
        purged += max(event_steps(session, "eval/val_loss") or [0]) > newest_checkpoint_step(run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert purged >= 2  # the killed sessions did leave steps that the resumed ones wrote again

    acc = read_tensorboard(run)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [1] + list(range(2, 61, 2))
    val = acc.Scalars("eval/val_loss")
    assert [e.step for e in val] == [r["step"] for r in metrics]
    assert [e.value for e in val] == pytest.approx([r["val_loss"] for r in metrics], rel=1e-6)
    for tag in TRAIN_TAGS:
        steps = scalar_steps(acc, tag)
        assert steps == sorted(set(steps)) and steps[-1] == 60, tag
    assert scalar_steps(acc, "train/loss") == sorted({1} | set(range(2, 61, 2)))
    with open(run / "log.csv", newline="") as f:
        table = [(int(r["step"]), r["name"]) for r in csv.DictReader(f)]
    assert len(table) == len(set(table))
    assert [s for s, name in table if name == "eval/val_loss"] == [r["step"] for r in metrics]


def wandb_records(path: Path):
    """The records of a W&B run file (what `wandb sync` uploads), as wandb's own protobuf Record
    messages. The file is a 7-byte W&B header and then LevelDB's log format: 32 KiB blocks of
    chunks, each with a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@pytest.mark.slow  # wandb's own process
def test_wandb_offline_run_gets_the_config_and_the_curves(text, tmp_path, monkeypatch):
    """W&B through its own client, offline: its run files hold the config and every logged step
    once; a resumed run goes on under the same run id."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(config(text, run, max_steps=10, log=("wandb",), wandb_project="gptforge-test"), progress=False)
    time.sleep(1.1)  # W&B names a session's folder by the second it started
    train(resume=run, max_steps=20, progress=False)
    run_id = (run / "wandb" / "gptforge-run-id").read_text()
    sessions = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(sessions) == 2

    history, logged_config = [], {}
    for session in sessions:
        for record in wandb_records(session / f"run-{run_id}.wandb"):
            if record.WhichOneof("record_type") == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
            elif record.WhichOneof("record_type") == "run":
                assert record.run.project == "gptforge-test" and record.run.display_name == "run"
                logged_config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    assert logged_config["train"]["lr"] == 1e-3 and logged_config["model"]["n_layers"] == 2
    assert logged_config["train"]["max_steps"] == 20  # the resumed session's
    loss_steps = [h["_step"] for h in history if "train/loss" in h]
    assert loss_steps == [1, 5, 10, 15, 20]
    val = {h["_step"]: h["eval/val_loss"] for h in history if "eval/val_loss" in h}
    assert val == pytest.approx({r["step"]: r["val_loss"] for r in rows(run)})
    assert [h["_step"] for h in history if h.get("sample/_type") == "html-file"] == [10, 20]
