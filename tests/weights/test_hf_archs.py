"""The modern block in and out of transformers' Llama and Qwen3 (and GPT-2 with the new switches),
with transformers itself as the reference: models built offline, in tmp_path."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.generate import generate
from gptforge.model import GPT
from gptforge.tokenizer import gpt2
from gptforge.weights import load_any
from gptforge.weights.checkpoint import save_checkpoint
from gptforge.weights.hf import export_hf

from helpers import assert_user_error, run_cli

CLASSES = {"llama": LlamaForCausalLM, "qwen3": Qwen3ForCausalLM, "gpt2": GPT2LMHeadModel}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def ours(seed: int = 0, **switches) -> GPT:
    """A tiny model whose every tensor (gains and biases included) is away from its initial value,
    so a tensor mapped to the wrong place, dropped or mis-scaled shows in the logits."""
    torch.manual_seed(seed)
    config = GPTConfig.from_preset("gpt2-tiny", vocab_size=300, context_length=24, emb_dim=48, n_heads=4,
                                   n_layers=2, **switches)
    model = GPT(config, gpt2()).eval()  # GPT-2's tokenizer, what the export writes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.tok_emb.weight[config.vocab_size:] = 0.0  # the padding rows stay zero
    return model


def logits_diff(a, b, vocab: int = 300, length: int = 24) -> float:
    idx = torch.randint(0, vocab, (3, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x, y = a(idx), b(idx)
    return (getattr(x, "logits", x) - getattr(y, "logits", y)).abs().max().item()


@pytest.mark.parametrize("family, switches", [
    ("qwen3", dict(arch="modern")),
    ("qwen3", dict(arch="modern", tie_embeddings=True, rope_theta=500.0, norm_eps=1e-6)),
    ("llama", dict(arch="modern", qk_norm=False)),
    ("llama", dict(arch="modern", qk_norm=False, bias=True, qkv_bias=True, mlp_hidden=100)),
    ("gpt2", dict(bias=False, norm_eps=1e-6, mlp_hidden=100)),
])
def test_export_equals_transformers_and_round_trips(tmp_path, family, switches):
    model = ours(**switches)
    export_hf(model, tmp_path / "hf")
    raw = json.loads((tmp_path / "hf/config.json").read_text())
    assert raw["model_type"] == family
    reference, info = CLASSES[family].from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert all(not entries for entries in info.values()), info  # nothing missing or unexpected
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "hf")) is CLASSES[family]
    diff = logits_diff(reference.eval(), model)
    assert diff < 1e-5, diff
    back = load_any(tmp_path / "hf")  # import: the same function, the same tensors
    assert logits_diff(back, model) < 1e-6
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items()
               if k in back.state_dict())
    export_hf(back, tmp_path / "again")
    first, second = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "again/model.safetensors")
    assert sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_transformers_models_import_exactly(tmp_path, family):
    """transformers' own model, built offline and saved with save_pretrained, loads as ours."""
    shape = dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=24, rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf_config = LlamaConfig(**shape, head_dim=12) if family == "llama" else Qwen3Config(**shape, head_dim=12)
    torch.manual_seed(0)
    reference = CLASSES[family](hf_config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    reference.save_pretrained(tmp_path / "hf")
    model = load_any(tmp_path / "hf")
    assert model.config.qk_norm == (family == "qwen3") and model.config.mlp_width == 80
    assert logits_diff(model, reference) < 1e-5
    prompt = torch.tensor([[5, 17, 33]])
    with torch.no_grad():  # greedy text through transformers' cache and ours
        theirs = reference.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, prompt, 15, temperature=0.0), theirs)


@pytest.mark.parametrize("switches, fragment", [
    (dict(arch="modern", logit_softcap=15.0), "logit_softcap 15"),
    (dict(arch="modern", mlp="relu2"), "mlp 'relu2'"),
    (dict(norm="rmsnorm"), "norm 'rmsnorm' with learned positions"),
    (dict(arch="modern", norm="layernorm"), "norm 'layernorm' with rotary positions"),
    (dict(arch="modern", mlp="gelu"), "mlp 'gelu' with rotary positions"),
    (dict(qk_norm=True), "qk_norm with learned positions"),
    (dict(arch="modern", qkv_bias=True), "qkv_bias without bias"),
])
@pytest.mark.slow  # CLI processes
def test_export_refuses_what_no_architecture_computes(tmp_path, switches, fragment):
    model = ours(**switches)
    with pytest.raises(UserError, match="cannot export to a transformers architecture"):
        export_hf(model, tmp_path / "hf")
    save_checkpoint(tmp_path / "ckpt", model)
    result = run_cli("convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"))
    assert_user_error(result, fragment)
    assert not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unsupported_llama_variants_are_refused(tmp_path):
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    for extra, fragment in ((dict(num_key_value_heads=2), "grouped-query attention"),
                            (dict(head_dim=16), "head_dim 16"),
                            (dict(hidden_act="gelu"), "hidden_act 'gelu'")):
        folder = tmp_path / fragment.split()[0]
        LlamaForCausalLM(LlamaConfig(**shape, **extra)).save_pretrained(folder)
        with pytest.raises(UserError, match=fragment):
            load_any(folder)
