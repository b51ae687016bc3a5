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
    said = capsys.readouterr()
    assert f"step-00000004/{damaged} is corrupt" in said.err  # warnings go to stderr
    assert "using step-00000002, the newest intact checkpoint (skipped step-00000004)" in said.err
    assert "step-00000004 failed verification: set aside as" in said.err
    assert "resuming" in said.out and "from step-00000002 (step 2" in said.out
    reference = train(resume=direct, max_steps=6, progress=False)

    assert resumed.step == reference.step == 6
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(rows(run)) == strip(rows(direct))
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]
    a, b = load_file(resumed.checkpoint / "model.safetensors"), load_file(reference.checkpoint / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The corrupt step-4 was kept aside, and written again, intact, by the resumed run.
    assert (run / "checkpoints" / "step-00000004" / "config.json").is_file()
    assert (run / "checkpoints" / "step-00000004.corrupt" / damaged).is_file()


@pytest.mark.slow  # a CLI process
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


def train_args(text, *extra: str) -> list[str]:
    return ["train", "--data", str(text), "--preset", "gpt2-tiny", "--context-length", "32", "--batch-size", "2",
            "--eval-every", "2", "--eval-batches", "1", "--device", "cpu", "--no-progress", *extra]


def intact(checkpoint) -> bool:
    from gptforge.weights.checkpoint import verify_checkpoint

    try:
        verify_checkpoint(checkpoint)
    except UserError:
        return False
    return True


def test_keep_last_after_a_fallback_keeps_the_intact_checkpoints_and_sets_the_corrupt_one_aside(text, tmp_path):
    run = tmp_path / "R"
    first = run_cli(*train_args(text, "--save-every", "2", "--keep-last", "2", "--max-steps", "6", "--out", str(run)))
    assert first.returncode == 0, first.stderr
    flip_a_byte(run / "checkpoints" / "step-00000006" / "model.safetensors")

    resumed = run_cli("train", "--resume", str(run), "--max-steps", "5", "--keep-last", "1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "from step-00000004 (step 4" in resumed.stdout
    # The corrupt one is evidence: set aside under a name no reader takes for a checkpoint, and said.
    assert "step-00000006.corrupt" in resumed.stderr
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000005", "step-00000006.corrupt"]  # resumed from, written last
    assert intact(run / "checkpoints" / "step-00000004") and intact(run / "checkpoints" / "step-00000005")

    # "Newest" is now step 5: the next resume takes it, and so does generate.
    again = run_cli("train", "--resume", str(run), "--max-steps", "7", "--keep-last", "1", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "from step-00000005 (step 5" in again.stdout and "corrupt" not in again.stdout + again.stderr
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000005", "step-00000006.corrupt", "step-00000007"]


def test_pruning_sets_aside_a_checkpoint_that_rotted_and_counts_only_intact_ones(run_of_two_checkpoints, capsys):
    from gptforge.training.run_folder import RunFolder

    run = RunFolder(run_of_two_checkpoints)
    shutil.copytree(run.checkpoint(4), run.checkpoint(6))
    flip_a_byte(run.checkpoint(4) / "train_state.pt")  # an older one rotted on disk
    run.prune(2, protect=(run.checkpoint(6),))  # step 6 counts; step 4 does not, so step 2 stays
    names = sorted(p.name for p in run.path.joinpath("checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000004.corrupt", "step-00000006"]
    assert "step-00000004.corrupt" in capsys.readouterr().err


def test_a_corrupt_tokenizer_falls_back_like_corrupt_weights(story_bpe_run, capsys):
    run = story_bpe_run
    (run / "checkpoints" / "step-00000004" / "tokenizer" / "tokenizer.json").write_text("{}")
    resumed = train(resume=run, max_steps=6, progress=False)
    out = capsys.readouterr()
    assert "using step-00000002, the newest intact checkpoint (skipped step-00000004)" in out.out + out.err
    assert resumed.step == 6 and (run / "checkpoints" / "step-00000004.corrupt").is_dir()


@pytest.fixture
def story_bpe_run(text, tiny_bpe_dir, tmp_path):
    cfg = TrainConfig.of(data=str(text), tokenizer=str(tiny_bpe_dir), preset="gpt2-tiny", context_length=32,
                      batch_size=2, eval_every=2, eval_batches=1, save_every=2, max_steps=4, device="cpu",
                      out=str(tmp_path / "run"))
    train(cfg, progress=False)
    return tmp_path / "run"


def test_an_invalid_utf8_metrics_line_does_not_block_resume(run_of_two_checkpoints, capsys):
    run = run_of_two_checkpoints
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 5, "loss": "\xff\xfe"}\n')  # not UTF-8 (a crash, a disk error)
    resumed = train(resume=run, max_steps=6, progress=False)
    out = capsys.readouterr()
    assert resumed.step == 6
    assert "metrics.jsonl" in out.err and "unreadable" in out.err
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]
