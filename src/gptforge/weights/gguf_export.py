"""A model as one GGUF file, the format llama.cpp, Ollama and LM Studio read, written with the gguf
package (llama.cpp's own GGUF library), and an Ollama Modelfile beside it.

The architecture is the transformers one hf_archs chose (hf_family): GPT-2 is llama.cpp's "gpt2",
Llama its "llama", Qwen3 its "qwen3". Each tensor goes where llama.cpp's convert_hf_to_gguf.py puts
that transformers tensor: named through gguf's own TensorNameMap, in nn.Linear's (out, in) layout
(which ggml lists as {in, out}), GPT-2's q, k, v fused in one attn_qkv. llama.cpp's "llama" rotates
pairs of consecutive values of each head, where transformers (and we) rotate its two halves, so
Llama's q and k rows are permuted to match; its "qwen3" rotates halves already. As in the
converter, 1-D tensors (norms, biases) and the position embeddings stay float32, and q8_0 falls back
to f16 for a matrix whose rows are not whole 32-value blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_file, atomic_write
from ..model import GPT
from ..tokenizer import tokenizer_of
from .gguf_vocab import add_vocab, gguf_vocab
from .hf import hf_tensors
from .hf_archs import hf_family
from .ollama import MODELFILE, Sampling, modelfile

TYPES = ("f32", "f16", "bf16", "q8_0")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("writing GGUF needs the gguf package: pip install 'gptforge[gguf]'") from None
    return gguf


def rotary_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q or k projection rows (or bias) of the rotate-half layout, reordered per head for
    llama.cpp's rotation of consecutive pairs: rows (h, 2, d/2) become (h, d/2, 2)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(model: GPT) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp's name, float32 array) for every tensor of `model`'s GGUF file."""
    gguf = _gguf()
    family = hf_family(model.config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.upper()], model.config.n_layers)
    for hf_name, tensor, _ in hf_tensors(model):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"gguf has no llama.cpp name for {hf_name}")
        if family == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            tensor = rotary_pairs(tensor, model.config.n_heads)
        yield name, tensor.to(torch.float32).contiguous().numpy()


def _encoded(gguf, name: str, data: np.ndarray, qtype):
    """(array to write, its type): 1-D tensors and position embeddings stay float32."""
    if data.ndim <= 1 or name.startswith("position_embd"):
        return data, gguf.GGMLQuantizationType.F32
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # q8_0 needs rows of whole 32-value blocks
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def _add_hyperparameters(writer, model: GPT, family: str) -> None:
    c = model.config
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.emb_dim)
    writer.add_feed_forward_length(c.mlp_width)
    writer.add_block_count(c.n_layers)
    writer.add_head_count(c.n_heads)
    writer.add_vocab_size(c.vocab_size)
    if family == "gpt2":
        writer.add_layer_norm_eps(c.norm_eps)
        return
    writer.add_head_count_kv(c.n_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)


def write_gguf(model: GPT, out: str | Path, type: str = "f32", sampling: Sampling | None = None,
               name: str = "gptforge model") -> Path:
    """Write `model` (with its tokenizer and, for a chat model, its chat template) as the GGUF file
    `out`, its matrices as `type` (TYPES), and an Ollama Modelfile beside it; both atomically.
    A model no llama.cpp architecture computes is refused (hf_archs.hf_family)."""
    if type not in TYPES:
        raise UserError(f"unknown GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    if not hasattr(model, "lm_head"):  # model.classifier: llama.cpp's classifiers are another format
        raise UserError("a classifier does not export to GGUF; use --to-hf (a *ForSequenceClassification folder)")
    gguf = _gguf()
    family = hf_family(model.config)
    tokenizer = tokenizer_of(model)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size)
    out = Path(out)
    qtype = gguf.GGMLQuantizationType[type.upper()]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type]
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[family.upper()]])
        writer.add_type("model")
        writer.add_name(name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, model, family)
        add_vocab(writer, vocab)
        if sampling is not None:
            writer.add_sampling_temp(sampling.temperature)
            if sampling.top_k:
                writer.add_sampling_top_k(sampling.top_k)
            if sampling.top_p is not None:
                writer.add_sampling_top_p(sampling.top_p)
        with torch.no_grad():
            for tensor_name, data in gguf_tensors(model):
                data, dtype = _encoded(gguf, tensor_name, data, qtype)
                writer.add_tensor(tensor_name, data, raw_dtype=dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    atomic_write(out.parent / MODELFILE, modelfile(out.name, tokenizer, model.config.context_length, sampling))
    return out
