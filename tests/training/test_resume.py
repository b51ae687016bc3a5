"""The exact-resume contract: a corrupt newest checkpoint is passed over for the newest intact
one, and the run then continues exactly as if resumed from that one directly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gptforge.errors import UserError
from gptforge.training import train
from gptforge.training.config import TrainConfig

from helpers import assert_user_error, run_cli


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flip_a_byte(path, from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run_of_two_checkpoints(text, tmp_path):
    """A run with checkpoints at steps 2 and 4 (dropout on, so the RNG state matters)."""
    cfg = TrainConfig.of(data=str(text), preset="gpt2-tiny", context_length=32, batch_size=2, dropout=0.1,
                      lr=1e-3, eval_every=1, eval_batches=1, save_every=2, max_steps=4, device="cpu",
                      out=str(tmp_path / "run"))
    train(cfg, progress=False)
    return tmp_path / "run"


@pytest.mark.parametrize("damaged", ["model.safetensors", "train_state.pt"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(run_of_two_checkpoints, tmp_path, damaged,
                                                                    capsys):
    run = run_of_two_checkpoints
    direct = tmp_path / "direct"  # the same run, resumed from step 2 directly
    shutil.copytree(run, direct)
    shutil.rmtree(direct / "checkpoints" / "step-00000004")
    flip_a_byte(run / "checkpoints" / "step-00000004" / damaged)

    resumed = train(resume=run, max_steps=6, progress=False)
    said = capsys.readouterr().out
    assert f"step-00000004/{damaged} is corrupt" in said
    assert "using step-00000002, the newest intact checkpoint (skipped step-00000004)" in said
    assert "resuming" in said and "from step-00000002 (step 2" in said
    reference = train(resume=direct, max_steps=6, progress=False)

    assert resumed.step == reference.step == 6
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(rows(run)) == strip(rows(direct))
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]
    a, b = load_file(resumed.checkpoint / "model.safetensors"), load_file(reference.checkpoint / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The corrupt step-4 was written again, intact, by the resumed run.
    assert (run / "checkpoints" / "step-00000004" / "config.json").is_file()


def test_a_run_whose_every_checkpoint_is_corrupt_is_refused_in_one_line(run_of_two_checkpoints):
    run = run_of_two_checkpoints
    for step in (2, 4):
        flip_a_byte(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = run_cli("train", "--resume", str(run), "--max-steps", "6", "--no-progress")
    assert_user_error(result, "is corrupt (step-00000004, step-00000002); nothing to load")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    with pytest.raises(UserError, match="every checkpoint .* is corrupt"):
        train(resume=run, max_steps=6, progress=False)
