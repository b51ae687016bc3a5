import json
import shutil

import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.tokenizer import CHAT_TOKENS, gpt2, tokenizer_of
from gptforge.weights import load_any
from gptforge.weights.checkpoint import list_checkpoints, save_checkpoint


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("gpt2-tiny", qkv_bias=True)).eval()


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
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=tiny_bpe.vocab_size))
    model.tokenizer = tiny_bpe
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
    model.tokenizer = chat  # the description alone rebuilds GPT-2's with its extra tokens
    assert load_any(save_checkpoint(tmp_path / "chat", model)).tokenizer.describe() == chat.describe()
