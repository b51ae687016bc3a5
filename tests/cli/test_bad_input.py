"""A battery of user mistakes and damaged files: each is one clear line on stderr, exit code 2, no
traceback, and nothing that already existed is changed."""

import json
import shutil

import pytest

from gptforge.data import prepare_corpus
from gptforge.text import read_documents
from gptforge.training import train
from gptforge.training.config import TrainConfig

from helpers import assert_user_error, run_cli_here


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A prepared corpus, a finished run, and damaged copies of both."""
    root = tmp_path_factory.mktemp("world")
    text = dict(read_documents("builtin:shakespeare"))["builtin:shakespeare/othello"][:30000]
    (root / "plays.txt").write_text(text, encoding="utf-8")
    prepare_corpus([str(root / "plays.txt")], root / "corpus", progress=False)
    train(TrainConfig.of(data=str(root / "corpus"), preset="gpt2-tiny", context_length=32, batch_size=2,
                      max_steps=2, eval_every=0, device="cpu", out=str(root / "run")), progress=False)
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(b"GIF89a\x00\x01\x02 not text")
    (root / "short.txt").write_text("Too short.")

    shutil.copytree(root / "corpus", root / "wrong-tokenizer")
    meta = json.loads((root / "wrong-tokenizer" / "meta.json").read_text())
    meta.update(tokenizer="llama", vocab_size=32000)
    (root / "wrong-tokenizer" / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(root / "corpus", root / "truncated")
    data = (root / "truncated" / "train-00000.bin").read_bytes()  # the first (only) train shard
    (root / "truncated" / "train-00000.bin").write_bytes(data[: len(data) // 2 + 1])

    ckpt = root / "run" / "checkpoints" / "step-00000002"
    shutil.copytree(ckpt, root / "corrupt-ckpt")
    weights = bytearray((root / "corrupt-ckpt" / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (root / "corrupt-ckpt" / "model.safetensors").write_bytes(bytes(weights))
    shutil.copytree(ckpt, root / "other-preset")  # weights of gpt2-tiny, config of a 3-layer model
    meta = json.loads((root / "other-preset" / "config.json").read_text())
    meta["model"]["n_layers"] = 3
    meta["files"].pop("model.safetensors")
    (root / "other-preset" / "config.json").write_text(json.dumps(meta))
    shutil.copytree(root / "run", root / "cut-state")
    state = root / "cut-state" / "checkpoints" / "step-00000002" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    meta = json.loads((state.parent / "config.json").read_text())
    meta["files"].pop("train_state.pt")  # so the loader itself, not the hash check, meets the damage
    (state.parent / "config.json").write_text(json.dumps(meta))
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CASES = [
    (["prepare", "{w}/missing.txt", "--out", "{w}/new"], "no such file or folder"),
    (["prepare", "{w}/empty.txt", "--out", "{w}/new"], "the corpus is empty"),
    (["prepare", "{w}/binary.txt", "--out", "{w}/new"], "looks like a binary file"),
    (["prepare", "{w}/plays.txt", "--out", "{w}/corpus"], "already exists and is not empty"),
    (["prepare", "{w}/plays.txt", "--out", "{w}/new", "--val-fraction", "1.5"], "val_fraction"),
    (["train", "--data", "{w}/missing.txt", "--out", "{w}/new"], "no such file"),
    (["train", "--data", "{w}/empty.txt", "--out", "{w}/new"], "is empty"),
    (["train", "--data", "{w}/binary.txt", "--out", "{w}/new"], "binary file"),
    (["train", "--data", "{w}/short.txt", "--out", "{w}/new"], "training split"),
    (["train", "--data", "{w}/wrong-tokenizer", "--out", "{w}/new"], "tokenizer 'llama'"),
    (["train", "--data", "{w}/truncated", "--out", "{w}/new"], "truncated or corrupt"),
    (["train", "--data", "{w}/corpus", "--batch-size", "0", "--out", "{w}/new"], "batch-size must be a positive"),
    (["train", "--data", "{w}/corpus", "--batch-size", "-4", "--out", "{w}/new"], "batch-size must be a positive"),
    (["train", "--data", "{w}/corpus", "--init-from", "{w}/run", "--context-length", "2048",
      "--out", "{w}/new"], "longer than the --init-from model's 32"),
    (["train", "--data", "{w}/corpus", "--out", "/proc/gptforge-run"], "cannot create run folder"),
    (["train", "--data", "{w}/corpus", "--out", "{w}/run"], "already holds a run"),
    (["train", "--resume", "{w}/run", "--lr", "0.1"], "lr=0.1 does not match"),
    (["train", "--resume", "{w}/cut-state"], "is not a gptforge train state"),
    (["generate", "--checkpoint", "{w}/corrupt-ckpt", "--prompt", "x"], "is corrupt"),
    (["generate", "--checkpoint", "{w}/other-preset", "--prompt", "x"], "does not match the model"),
    (["eval", "--checkpoint", "{w}/missing", "--data", "{w}/corpus"], "no such checkpoint"),
    (["eval", "--checkpoint", "{w}/run", "--data", "{w}/truncated"], "truncated or corrupt"),
]


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_input(world, args, fragment):
    before = snapshot(world)
    result = run_cli_here(*[a.format(w=world) for a in args], "--device", "cpu") if args[0] != "prepare" \
        else run_cli_here(*[a.format(w=world) for a in args])
    assert_user_error(result, fragment)
    assert snapshot(world) == before
    assert not (world / "new").exists()


def test_odd_but_valid_text_is_handled(world, tmp_path):
    """Invalid UTF-8 is replaced and counted, and one huge line is just text: neither is an error."""
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait. ".encode("latin-1") * 2000)
    (tmp_path / "one-line.txt").write_text("word " * 1_000_000)  # 5 MB, no newline at all
    r = run_cli_here("prepare", str(tmp_path / "latin1.txt"), str(tmp_path / "one-line.txt"),
                "--out", str(tmp_path / "corpus"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    assert meta["replaced_invalid_utf8"] == 2000
    assert meta["tokens"]["train"] + meta["tokens"]["val"] > 1_000_000


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
def test_a_seed_torch_cannot_take_is_one_line_for_every_model_command(command):
    """--seed also seeds --random-init's weights, before any sampling check could see it."""
    prompt = ["--prompt", "Hi"] if command == "generate" else []
    result = run_cli_here(command, "--preset", "gpt2-tiny", "--random-init", "--seed", str(2**64), *prompt)
    assert_user_error(result, "seed must be an integer from -2**63 to 2**64 - 1")
