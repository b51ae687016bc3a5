"""LoRA adapters out to the PEFT format, so the Hugging Face stack runs them on the base model:

    base = GPT2LMHeadModel.from_pretrained(BASE_HF)        # gptforge convert --to-hf BASE --out BASE_HF
    base.resize_token_embeddings(VOCAB)                    # only when the adapter added tokens
    model = peft.PeftModel.from_pretrained(base, ADAPTER)  # gptforge convert --to-peft RUN --out ADAPTER

gptforge writes LoRA itself (model/lora.py) rather than running PEFT on its model: PEFT adapts
named module types (transformers' Conv1D for GPT-2), and our projections are nn.Linear
subclasses with other names, so PEFT would need a custom mapping while the whole method is ~40
lines. The two meet here, through the export's tensor map (weights/hf_archs.tensor_map), so GPT-2's
block and the modern one (Llama, Qwen3) export alike. PEFT keeps lora_A (rank, in) and lora_B
(out, rank) in nn.Linear's layout even for a Conv1D layer (`fan_in_fan_out` transposes only their
product), which is our layout. A fused projection of ours that is several in transformers (the
modern block's qkv -> q_proj, k_proj, v_proj; its SwiGLU fc -> gate_proj, up_proj) is exact as
several adapters: each part keeps lora_A and takes its rows of lora_B, since (B A)'s rows are B's
rows times A. Trainable vocabulary rows become PEFT's `trainable_token_indices` rows (full rows,
not deltas, as PEFT stores them). peft itself is not needed here; the tests load the export with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import GPTConfig
from ..errors import UserError
from ..files import atomic_folder, check_output_folder
from ..model.lora import ROWS_KEY, TARGETS
from .checkpoint import WEIGHTS, read_checkpoint_config, verify_checkpoint
from .hf_archs import hf_family, tensor_map
from .load import lora_checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _hf_parts(config: GPTConfig) -> tuple[dict[str, tuple[str, ...]], str]:
    """(our module -> the transformers modules of its parts, full names without ".weight"), and
    the family (refused in one line when no transformers architecture computes the model)."""
    family = hf_family(config)
    prefix = "transformer." if family == "gpt2" else ""  # GPT2LMHeadModel's body, lm_head aside

    def full(name: str) -> str:
        return (name if name.startswith("lm_head") else prefix + name).removesuffix(".weight")

    parts = {ours.removesuffix(".weight"): tuple(full(h) for h in hf)
             for ours, (hf, _) in tensor_map(config, family).items() if ours.endswith(".weight")}
    return parts, family


def peft_state(adapter: dict, config: GPTConfig) -> dict:
    """Our adapter tensors under the names PEFT saves them with."""
    parts, _ = _hf_parts(config)
    out = {}
    for key, tensor in adapter.items():
        module, _, kind = key.rpartition(".")  # "blocks.0.attn.qkv", "lora_A"
        if kind == ROWS_KEY:
            out[f"base_model.model.{parts[module][0]}.token_adapter.trainable_tokens_delta"] = tensor
            continue
        names = parts[module]
        pieces = tensor.chunk(len(names)) if kind == "lora_B" else [tensor] * len(names)
        for name, piece in zip(names, pieces):
            out[f"base_model.model.{name}.{kind}.weight"] = piece
    return {k: v.clone(memory_format=torch.contiguous_format) for k, v in out.items()}  # parts share no storage


def peft_config(lora: dict, config: GPTConfig) -> dict:
    """adapter_config.json: PEFT's LoraConfig for this adapter (PEFT fills in the fields left out)."""
    parts, family = _hf_parts(config)
    # PEFT matches a target against the end of a module's name: the last two components are
    # unique within a block (GPT-2's attn.c_proj and mlp.c_proj share the last one).
    targets = [".".join(name.split(".")[-2:]) for t in lora["targets"] for name in parts[f"blocks.0.{TARGETS[t]}"]]
    out = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": lora["base"]["path"],
        "r": lora["rank"],
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "target_modules": targets,
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D layers store (in, out)
        "bias": "none",
        "inference_mode": True,
    }
    if lora.get("new_rows"):
        rows = list(range(*lora["new_rows"]))
        embedding = parts["tok_emb"][0].rpartition(".")[2]  # wte, embed_tokens
        out["trainable_token_indices"] = rows if config.tie_embeddings else {embedding: rows, "lm_head": rows}
    return out


def export_peft(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the adapter of a LoRA checkpoint (or run) as a PEFT adapter folder, atomically."""
    out = Path(out)
    check_output_folder(out, overwrite)
    resolved = lora_checkpoint(checkpoint)
    meta = read_checkpoint_config(resolved)
    if "classifier" in meta:  # its head has no place in a causal-LM adapter
        raise UserError(f"{checkpoint} is a classifier's adapter; export it merged with --to-hf")
    verify_checkpoint(resolved, (WEIGHTS,))
    config = GPTConfig.from_dict(meta["model"])
    with atomic_folder(out) as tmp:
        save_file(peft_state(load_file(resolved / WEIGHTS), config), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_config(meta["lora"], config), indent=2) + "\n")
    return out
