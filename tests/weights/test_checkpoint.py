import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.tokenizer import CHAT_TOKENS, gpt2, tokenizer_of
from gptforge.weights import load_any
from gptforge.weights.checkpoint import list_checkpoints, save_checkpoint, verify_checkpoint

from helpers import WriteFaults, assert_user_error, random_gpt, run_cli


def rehash(path, name) -> None:
    """Record a rewritten file's sha256 in the checkpoint's config.json, as a forger would."""
    meta = json.loads((path / "config.json").read_text())
    meta["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / "config.json").write_text(json.dumps(meta))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("gpt2-tiny", qkv_bias=True), gpt2()).eval()


def test_round_trip_gives_the_same_logits_and_keeps_tying(tmp_path, model):
    path = save_checkpoint(tmp_path / "ckpt", model, train_config={"lr": 1e-3})
    loaded = load_any(path)
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    idx = torch.randint(0, 50257, (2, 9))
    torch.testing.assert_close(loaded(idx), model(idx), rtol=0, atol=0)
    meta = json.loads((path / "config.json").read_text())
    assert meta["model"] == model.config.to_dict() and meta["train"] == {"lr": 1e-3}


def test_overwrite_leaves_no_temporary_folders(tmp_path, model):
    save_checkpoint(tmp_path / "ckpt", model)
    torch.nn.init.zeros_(model.final_norm.bias)
    model.final_norm.bias.data += 1.0
    save_checkpoint(tmp_path / "ckpt", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_any(tmp_path / "ckpt").final_norm.bias[0].item() == 1.0


def test_latest_complete_checkpoint_is_found(tmp_path, model):
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "step-00000010", model)
    save_checkpoint(run / "checkpoints" / "step-00000020", model)
    (run / "checkpoints" / "step-00000030").mkdir()  # incomplete: no config.json
    assert list_checkpoints(run)[-1].name == "step-00000020"


def test_corrupt_weights_are_named(tmp_path, model):
    path = save_checkpoint(tmp_path / "ckpt", model)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        load_any(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        load_any(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a checkpoint, a run folder"):
        load_any(tmp_path / "empty")


def test_a_checkpoint_carries_its_tokenizer(tmp_path, tiny_bpe):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=tiny_bpe.vocab_size), tiny_bpe)
    path = save_checkpoint(tmp_path / "ckpt", model)
    meta = json.loads((path / "config.json").read_text())
    assert meta["tokenizer"] == tiny_bpe.describe() and meta["tokenizer"]["sha256"] == tiny_bpe.sha256
    assert sorted(p.name for p in (path / "tokenizer").iterdir()) == ["meta.json", "tokenizer.json"]
    loaded = load_any(path)  # the folder alone is enough: nothing points outside it
    assert loaded.tokenizer.same_as(tiny_bpe) and tokenizer_of(loaded) is loaded.tokenizer

    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_any(path)
    shutil.rmtree(path / "tokenizer")
    with pytest.raises(UserError, match=f"was trained with tokenizer {tiny_bpe.name}, whose files are missing"):
        load_any(path)


def test_a_gpt2_checkpoint_records_gpt2_and_old_ones_mean_gpt2(tmp_path, model):
    path = save_checkpoint(tmp_path / "ckpt", model)
    meta = json.loads((path / "config.json").read_text())
    assert meta["tokenizer"] == gpt2().describe() and not (path / "tokenizer").exists()
    assert load_any(path).tokenizer is gpt2()
    del meta["tokenizer"]  # a checkpoint from before tokenizers were recorded
    (path / "config.json").write_text(json.dumps(meta))
    assert load_any(path).tokenizer is gpt2()
    chat = gpt2().with_special_tokens(CHAT_TOKENS)
    with_chat = GPT(model.config, chat)  # the description alone rebuilds GPT-2's with its extra tokens
    assert load_any(save_checkpoint(tmp_path / "chat", with_chat)).tokenizer.describe() == chat.describe()


def small_train_state(model) -> dict:
    """An optimizer state after one step, as a checkpoint's train_state.pt holds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).float().mean().backward()
    optimizer.step()
    return {"optimizer": optimizer.state_dict(), "position": {"step": 1}}


@pytest.mark.parametrize("error, step", [(errno.ENOSPC, 2), (errno.EIO, 1)])  # a new one; replacing one
def test_a_fault_at_any_write_of_a_save_leaves_the_previous_checkpoints_intact(tmp_path, monkeypatch, error, step):
    model = random_gpt(n_layers=1)
    state = small_train_state(model)
    checkpoints = tmp_path / "run" / "checkpoints"
    save_checkpoint(checkpoints / "step-00000001", model, {}, state)
    faults = WriteFaults(monkeypatch)
    save_checkpoint(tmp_path / "clean", model, {}, state)  # how many writes and fsyncs a save makes
    writes = faults.count
    assert writes >= 5
    reason = os.strerror(error)[0].lower() + os.strerror(error)[1:]
    target = checkpoints / f"step-{step:08d}"
    for k in range(1, writes + 1):
        faults.count, faults.fail_at, faults.error = 0, k, error
        with pytest.raises(UserError) as raised:
            save_checkpoint(target, model, {}, state)
        assert str(raised.value) == f"could not write checkpoint {target}: {reason}", k
        names = sorted(p.name for p in checkpoints.iterdir())
        # Only the last fsync (of the folder that holds it) comes after the rename: then the new
        # checkpoint is complete, but the save is still reported as failed.
        assert names == (["step-00000001", "step-00000002"] if k == writes and step == 2 else ["step-00000001"]), k
        for name in names:
            verify_checkpoint(checkpoints / name)
        shutil.rmtree(checkpoints / "step-00000002", ignore_errors=True)
    assert load_any(checkpoints / "step-00000001").config == model.config


def test_weights_of_a_wrong_dtype_are_named_in_one_line(tmp_path, model):
    path = save_checkpoint(tmp_path / "ckpt", model)
    weights = load_file(path / "model.safetensors")
    weights["blocks.0.attn.qkv.weight"] = weights["blocks.0.attn.qkv.weight"].to(torch.int8)
    save_file(weights, path / "model.safetensors")
    rehash(path, "model.safetensors")
    with pytest.raises(UserError, match=r"model.safetensors: blocks.0.attn.qkv.weight has dtype int8"):
        load_any(path)


def test_a_pickled_train_state_is_not_a_gptforge_train_state(tmp_path, model):
    from gptforge.weights.checkpoint import load_train_state

    path = save_checkpoint(tmp_path / "ckpt", model, {}, {"position": {"step": 1}})
    torch.save({"evil": Path("x")}, path / "train_state.pt")  # a pickle of a class: not weights-only
    rehash(path, "train_state.pt")
    with pytest.raises(UserError) as raised:
        load_train_state(path)
    assert "is not a gptforge train state" in str(raised.value)
    assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)


def test_nonfinite_weights_are_said_on_load_and_refused_for_generation(tmp_path, model, capsys):
    path = save_checkpoint(tmp_path / "ckpt", model)
    weights = load_file(path / "model.safetensors")
    weights["pos_emb.weight"][10] = float("nan")  # positions a short generation never reaches
    weights["pos_emb.weight"][11, 0] = float("inf")
    save_file(weights, path / "model.safetensors")
    rehash(path, "model.safetensors")
    load_any(path)
    said = capsys.readouterr().err
    assert "NaN or inf" in said and "pos_emb.weight" in said
    with pytest.raises(UserError, match="NaN or inf.*--allow-nonfinite"):
        load_any(path, nonfinite="refuse")
    result = run_cli("generate", "--checkpoint", str(path), "--prompt", "x", "--max-new-tokens", "2")
    assert_user_error(result, "--allow-nonfinite")
    assert_user_error(run_cli("chat", "--checkpoint", str(path), input=""), "--allow-nonfinite")
    allowed = run_cli("generate", "--checkpoint", str(path), "--prompt", "x", "--max-new-tokens", "2",
                      "--allow-nonfinite")
    assert allowed.returncode == 0 and "NaN or inf" in allowed.stderr, allowed.stderr


def test_our_safetensors_writer_is_read_back_exactly_by_the_library(tmp_path):
    from gptforge.files import write_file
    from gptforge.weights.checkpoint import write_safetensors

    tensors = {"a": torch.randn(3, 5).bfloat16(), "b": torch.randn(7), "empty": torch.zeros(0, 4),
               "flag": torch.tensor(True), "i8": torch.arange(5, dtype=torch.int8), "h": torch.randn(2, 3).half(),
               "d": torch.randn(3).double()}
    write_file(tmp_path / "x.safetensors", lambda f: write_safetensors(f, tensors))
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
