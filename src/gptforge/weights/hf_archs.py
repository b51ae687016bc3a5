"""The transformers architectures our model can be, in our config's terms: GPT-2 (GPT2LMHeadModel),
Llama (LlamaForCausalLM) and Qwen3 (Qwen3ForCausalLM).

For each: which of our configs it matches (`hf_family`, which names the switch that matches none),
its config.json (`hf_config`, `parse_hf_config`) and where each of our tensors lives in its weights
(`tensor_map`). Our fused matrices are its separate ones stacked by rows: qkv = [q; k; v] and a
SwiGLU fc = [gate; up]. GPT-2's Conv1D layers store (in, out) where nn.Linear stores (out, in).
Reading transformers' modeling code gives the details matched here: RMSNorm as x / rms(x) * gain
with the eps of config.json, rotary embeddings in the "rotate half" layout with inv_freq =
theta^(-2i/head_dim), QK-norm (Qwen3) on each head's dimensions before the rotation, SiLU gates.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import GPTConfig
from ..errors import UserError
from ..tokenizer import Tokenizer, gpt2
from ..tokenizer.gpt2_bpe import GPT2_VOCAB_SIZE

FAMILIES = ("gpt2", "llama", "qwen3")
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SEQUENCE_CLASSES = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification",
                    "qwen3": "Qwen3ForSequenceClassification"}

# (our name, its HF part names, stored as Conv1D) per layer; "{i}" is the layer.
TensorMap = dict[str, tuple[tuple[str, ...], bool]]


def hf_family(config: GPTConfig) -> str:
    """The transformers architecture that computes exactly what a model of `config` computes, or a
    UserError naming the first switch that no architecture has."""
    refuse = _mismatch(config)
    if refuse:
        raise UserError(f"cannot export to a transformers architecture: {refuse}")
    if config.positions == "learned":
        return "gpt2"
    return "qwen3" if config.qk_norm else "llama"


def _mismatch(c: GPTConfig) -> str | None:
    """What keeps `c` from every architecture, or None."""
    if c.logit_softcap:
        return f"logit_softcap {c.logit_softcap:g} (GPT-2, Llama and Qwen3 have no logit soft-capping; use 0)"
    if c.mlp == "relu2":
        return "mlp 'relu2' (GPT-2's MLP is gelu, Llama's and Qwen3's swiglu)"
    if c.positions == "learned":  # GPT-2
        checks = [(c.norm != "layernorm", f"norm '{c.norm}' with learned positions (GPT-2 uses layernorm)"),
                  (c.mlp != "gelu", f"mlp '{c.mlp}' with learned positions (GPT-2 uses gelu)"),
                  (c.qk_norm, "qk_norm with learned positions (GPT-2 has no QK-norm)")]
    else:  # Llama, or Qwen3 with QK-norm
        checks = [(c.norm != "rmsnorm", f"norm '{c.norm}' with rotary positions (Llama and Qwen3 use rmsnorm)"),
                  (c.mlp != "swiglu", f"mlp '{c.mlp}' with rotary positions (Llama and Qwen3 use swiglu)"),
                  (c.qkv_bias != c.bias, ("qkv_bias without bias, or bias without qkv_bias (Llama's "
                                          "attention_bias covers q, k, v and o together)")),
                  (c.qk_norm and c.bias, "bias with qk_norm (Qwen3's MLP has no biases)")]
    return next((what for bad, what in checks if bad), None)


def tensor_map(config: GPTConfig, family: str) -> TensorMap:
    """Our tensor names -> (the HF names of its parts, Conv1D), for every tensor the HF model
    stores; a bias we lack is written as zeros (the same function)."""
    layers = [(ours.replace("{i}", str(i)), tuple(h.replace("{i}", str(i)) for h in hf), conv)
              for i in range(config.n_layers) for ours, hf, conv in _layer_names(config, family)]
    if family == "gpt2":
        names = {"tok_emb.weight": (("wte.weight",), False), "pos_emb.weight": (("wpe.weight",), False),
                 "final_norm.weight": (("ln_f.weight",), False), "final_norm.bias": (("ln_f.bias",), False)}
    else:
        names = {"tok_emb.weight": (("model.embed_tokens.weight",), False),
                 "final_norm.weight": (("model.norm.weight",), False)}
    names.update({ours: (hf, conv) for ours, hf, conv in layers})
    if not config.tie_embeddings:  # a tied head is the embedding itself; transformers does not store it
        names["lm_head.weight"] = (("lm_head.weight",), False)
    return names


def _layer_names(c: GPTConfig, family: str) -> list[tuple[str, tuple[str, ...], bool]]:
    b, a, m = "blocks.{i}.", "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
    if family == "gpt2":
        pairs = (("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.out_proj", "attn.c_proj", True),
                 ("ln2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.out_proj", "mlp.c_proj", True))
        return [(f"{b}{ours}.{kind}", (f"h.{{i}}.{hf}.{kind}",), conv and kind == "weight")
                for ours, hf, conv in pairs for kind in ("weight", "bias")]
    names = [(b + "ln1.weight", ("model.layers.{i}.input_layernorm.weight",), False),
             (b + "ln2.weight", ("model.layers.{i}.post_attention_layernorm.weight",), False)]
    kinds = ("weight", "bias") if c.bias else ("weight",)
    for kind in kinds:
        names += [(f"{b}attn.qkv.{kind}", tuple(f"{a}{p}_proj.{kind}" for p in "qkv"), False),
                  (f"{b}attn.out_proj.{kind}", (f"{a}o_proj.{kind}",), False),
                  (f"{b}mlp.fc.{kind}", (f"{m}gate_proj.{kind}", f"{m}up_proj.{kind}"), False),
                  (f"{b}mlp.out_proj.{kind}", (f"{m}down_proj.{kind}",), False)]
    if family == "qwen3":
        names += [(b + "attn.q_norm.weight", (a + "q_norm.weight",), False),
                  (b + "attn.k_norm.weight", (a + "k_norm.weight",), False)]
    return names


# --- config.json ---------------------------------------------------------------------------------

def hf_config(config: GPTConfig, dtype: torch.dtype = torch.float32, tokenizer: Tokenizer | None = None) -> dict:
    """transformers' config for our model (GPT2Config, LlamaConfig or Qwen3Config; GPT-2's
    tokenizer unless told), as the dict that goes to config.json."""
    family = hf_family(config)
    out = {"architectures": [CLASSES[family]], "model_type": family, "vocab_size": config.vocab_size,
           "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
           "torch_dtype": str(dtype).removeprefix("torch.")}
    if family == "gpt2":
        out.update(n_positions=config.context_length, n_embd=config.emb_dim, n_layer=config.n_layers,
                   n_head=config.n_heads, n_inner=config.mlp_hidden, activation_function="gelu_new",
                   resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                   layer_norm_epsilon=config.norm_eps, scale_attn_weights=True,
                   # The rest of what GPT2Config writes; n_ctx (OpenAI's own config.json has it) is
                   # what llama.cpp's convert_hf_to_gguf.py reads as GPT-2's context length.
                   n_ctx=config.context_length, reorder_and_upcast_attn=False,
                   scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
                   summary_type="cls_index", summary_use_proj=True, summary_activation=None,
                   summary_proj_to_labels=True, summary_first_dropout=0.1)
    else:
        theta = config.rope_theta
        out.update(hidden_size=config.emb_dim, intermediate_size=config.mlp_width,
                   num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                   num_key_value_heads=config.n_heads, head_dim=config.head_dim, hidden_act="silu",
                   max_position_embeddings=config.context_length, rms_norm_eps=config.norm_eps,
                   # rope_parameters for transformers 5, rope_theta for the 4.x releases
                   rope_parameters={"rope_type": "default", "rope_theta": theta}, rope_theta=theta,
                   rope_scaling=None, attention_bias=config.bias, attention_dropout=config.dropout)
        if family == "llama":
            out.update(mlp_bias=config.bias, pretraining_tp=1)
        else:
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layers)
    eot_id = (tokenizer or gpt2()).eot_id
    if config.vocab_size > eot_id:  # the tokenizer's <|endoftext|> exists in this vocabulary
        out.update(bos_token_id=eot_id, eos_token_id=eot_id)
    return out


def classifier_config(config: GPTConfig, classes: list[str], pad_id: int) -> dict:
    """What a classifier's config.json adds: the *ForSequenceClassification class, its labels,
    and pad_token_id, the id whose last absence marks the token transformers reads (as ours)."""
    return {"architectures": [SEQUENCE_CLASSES[hf_family(config)]], "num_labels": len(classes),
            "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
            "pad_token_id": pad_id}


def parse_hf_config(raw: dict, path: Path) -> tuple[GPTConfig, str]:
    """Our config, and the family, for a transformers config.json (`raw`, read from `path`);
    variants our model cannot compute are refused rather than loaded into a model that would
    compute something else."""
    family = raw.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"{path.parent} is not a model gptforge can read (config.json says model_type "
                        f"{family!r}; it reads {', '.join(FAMILIES)})")

    def get(key: str, default):  # transformers' defaults for absent or null fields
        return default if raw.get(key) is None else raw[key]

    read = _read_gpt2 if family == "gpt2" else _read_llama
    fields, unsupported = read(get, raw)
    for bad, what in unsupported:
        if bad:
            raise UserError(f"{path}: gptforge does not support {what}")
    try:
        return GPTConfig(**fields), family
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _read_gpt2(get, raw: dict) -> tuple[dict, list]:
    emb = get("n_embd", 768)
    unsupported = [
        (get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"),
         f"activation_function {raw.get('activation_function')!r} (only GPT-2's tanh GELU)"),
        (not get("scale_attn_weights", True), "scale_attn_weights false"),
        (get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx"),
        (get("add_cross_attention", False), "add_cross_attention"),
    ]
    fields = dict(vocab_size=get("vocab_size", GPT2_VOCAB_SIZE), context_length=get("n_positions", 1024),
                  emb_dim=emb, n_heads=get("n_head", 12), n_layers=get("n_layer", 12),
                  dropout=get("resid_pdrop", 0.1), qkv_bias=True, arch="gpt2",
                  norm_eps=get("layer_norm_epsilon", 1e-5), mlp_hidden=raw.get("n_inner"),
                  tie_embeddings=bool(get("tie_word_embeddings", True)))
    return fields, unsupported


def _read_llama(get, raw: dict) -> tuple[dict, list]:
    family, emb, heads = raw["model_type"], get("hidden_size", 4096), get("num_attention_heads", 32)
    rope = get("rope_parameters", None) or get("rope_scaling", None) or {}
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))
    attention_bias, mlp_bias = get("attention_bias", False), get("mlp_bias", False)
    unsupported = [
        (get("num_key_value_heads", heads) != heads,
         f"grouped-query attention (num_key_value_heads {raw.get('num_key_value_heads')} < {heads} heads)"),
        (get("head_dim", emb // heads) * heads != emb,
         f"head_dim {raw.get('head_dim')} other than hidden_size / num_attention_heads"),
        (get("hidden_act", "silu") != "silu", f"hidden_act {raw.get('hidden_act')!r} (only silu)"),
        (rope.get("rope_type", rope.get("type", "default")) != "default", f"rope scaling {rope}"),
        (get("use_sliding_window", False), "sliding-window attention"),
        (family == "llama" and attention_bias != mlp_bias, "attention_bias without mlp_bias (or the reverse)"),
        (family == "qwen3" and attention_bias, "attention_bias in a Qwen3 model"),
    ]
    fields = dict(vocab_size=get("vocab_size", 32000), context_length=get("max_position_embeddings", 2048),
                  emb_dim=emb, n_heads=heads, n_layers=get("num_hidden_layers", 32),
                  dropout=float(get("attention_dropout", 0.0)), arch="modern", positions="rope",
                  rope_theta=float(theta), norm="rmsnorm", norm_eps=get("rms_norm_eps", 1e-6), mlp="swiglu",
                  mlp_hidden=get("intermediate_size", 11008), qk_norm=family == "qwen3",
                  bias=attention_bias, qkv_bias=attention_bias, zero_init_proj=False,
                  tie_embeddings=bool(get("tie_word_embeddings", False)))
    return fields, unsupported
