"""LoRA checkpoints (adapter + base identity) and their PEFT export, with transformers and peft as
the independent reference."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gptforge.errors import UserError
from gptforge.model.lora import add_lora
from gptforge.model.vocab import grow_vocabulary
from gptforge.weights import load_any
from gptforge.weights.checkpoint import save_checkpoint
from gptforge.weights.hf import export_hf
from gptforge.weights.load import base_identity, load_lora
from gptforge.weights.peft import export_peft

from helpers import random_gpt

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def lora_checkpoint(tmp_path, tied=True, rows=True, targets=("qkv", "attn_out", "mlp_in", "mlp_out"), arch="gpt2"):
    """A base checkpoint, and a LoRA checkpoint on it whose adapter is random (as after training)."""
    shape = dict(qkv_bias=True) if arch == "gpt2" else dict(arch=arch)
    base = random_gpt(0, tie_embeddings=tied, **shape)
    base_path = save_checkpoint(tmp_path / "base", base)
    model = grow_vocabulary(random_gpt(0, tie_embeddings=tied, **shape), 259) if rows else base
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=targets, new_rows=(257, 259) if rows else None,
             base=base_identity(base_path))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return base_path, save_checkpoint(tmp_path / "adapter", model), model.eval()


def test_a_lora_checkpoint_holds_only_the_adapter_and_loads_merged(tmp_path):
    base_path, path, model = lora_checkpoint(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    base_meta = json.loads((base_path / "config.json").read_text())
    assert meta["lora"]["base"]["sha256"] == base_meta["files"]["model.safetensors"]
    assert meta["lora"]["rank"] == 4 and meta["lora"]["new_rows"] == [257, 259]
    assert set(load_file(path / "model.safetensors")) == {
        "tok_emb.new_rows", *(f"blocks.{i}.{m}.lora_{ab}" for i in range(2) for ab in "AB"
                              for m in ("attn.qkv", "attn.out_proj", "mlp.fc", "mlp.out_proj"))}
    idx = torch.randint(0, 259, (2, 12))
    merged = load_any(path)
    assert merged.config.vocab_size == 259 and merged.lora is None
    torch.testing.assert_close(merged(idx), model(idx), rtol=0, atol=1e-5)
    # moved together with its base, it still finds it (by the relative path)
    shutil.copytree(tmp_path / "base", tmp_path / "elsewhere" / "base")
    shutil.copytree(path, tmp_path / "elsewhere" / "adapter")
    shutil.rmtree(tmp_path / "base")
    torch.testing.assert_close(load_any(tmp_path / "elsewhere" / "adapter")(idx), model(idx), rtol=0, atol=1e-5)


def test_another_base_is_refused_in_one_line(tmp_path):
    base_path, path, _ = lora_checkpoint(tmp_path)
    other = save_checkpoint(tmp_path / "other", random_gpt(5, qkv_bias=True))
    with pytest.raises(UserError, match="LoRA adapter for another base model") as e:
        load_lora(path, base=other)
    assert "\n" not in str(e.value)
    save_checkpoint(base_path, random_gpt(6, qkv_bias=True))  # the base retrained in place
    with pytest.raises(UserError, match="another base model"):
        load_any(path)
    shutil.rmtree(base_path)
    with pytest.raises(UserError, match="whose base model .* is missing"):
        load_any(path)


@pytest.mark.parametrize("tied,rows,arch", [(True, True, "gpt2"), (False, True, "gpt2"), (True, False, "gpt2"),
                                            (False, True, "modern")])  # modern: Qwen3, fused qkv and SwiGLU split
def test_peft_loads_the_export_and_computes_our_logits(tmp_path, tied, rows, arch):
    base_path, path, model = lora_checkpoint(tmp_path, tied, rows, arch=arch)
    export_hf(load_any(base_path), tmp_path / "base-hf")
    export_peft(path, tmp_path / "peft")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base-hf")
    if rows:
        hf.resize_token_embeddings(259)
    reference = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = reference(idx).logits
    torch.testing.assert_close(model(idx), theirs, rtol=0, atol=1e-4)
    # and their merge agrees with ours
    with torch.no_grad():
        merged = reference.merge_and_unload()(idx).logits
    torch.testing.assert_close(load_any(path)(idx), merged, rtol=0, atol=1e-4)


def test_peft_export_refuses_a_plain_checkpoint(tmp_path):
    plain = save_checkpoint(tmp_path / "plain", random_gpt(0))
    with pytest.raises(UserError, match="not a LoRA checkpoint"):
        export_peft(plain, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
