"""LoRA adapters out to the PEFT format, so the Hugging Face stack runs them on the base model:

    base = GPT2LMHeadModel.from_pretrained(BASE_HF)        # gptforge convert --to-hf BASE --out BASE_HF
    base.resize_token_embeddings(VOCAB)                    # only when the adapter added tokens
    model = peft.PeftModel.from_pretrained(base, ADAPTER)  # gptforge convert --to-peft RUN --out ADAPTER

gptforge writes LoRA itself (model/lora.py) rather than running PEFT on its model: PEFT adapts
named module types (transformers' Conv1D for GPT-2), and our projections are nn.Linear
subclasses with other names, so PEFT would need a custom mapping while the whole method is ~40
lines. The two meet here. The tensors map one to one: PEFT keeps lora_A (rank, in) and lora_B
(out, rank) in nn.Linear's layout even for a Conv1D layer (`fan_in_fan_out` transposes only their
product), which is our layout; our module names become GPT-2's (c_attn, c_proj, c_fc); trainable
vocabulary rows become PEFT's `trainable_token_indices` rows (full rows, not deltas, as PEFT
stores them). peft itself is not needed here; the tests load the export with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..config import GPTConfig
from ..files import atomic_folder, check_output_folder
from ..model.lora import ROWS_KEY
from .checkpoint import WEIGHTS, read_checkpoint_config, verify_checkpoint
from .hf import hf_names
from .load import lora_checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# --lora-targets names -> PEFT target_modules (matched as the end of a module's name)
PEFT_TARGETS = {"qkv": "c_attn", "attn_out": "attn.c_proj", "mlp_in": "c_fc", "mlp_out": "mlp.c_proj"}
HF_EMBEDDING = {"tok_emb": "transformer.wte", "lm_head": "lm_head"}


def peft_state(adapter: dict, config: GPTConfig) -> dict:
    """Our adapter tensors under the names PEFT saves them with."""
    module_names = {ours.removesuffix(".weight"): hf.removesuffix(".weight")
                    for hf, (ours, _) in hf_names(config).items()}
    out = {}
    for key, tensor in adapter.items():
        module, _, kind = key.rpartition(".")  # "blocks.0.attn.qkv", "lora_A"
        if kind == ROWS_KEY:
            out[f"base_model.model.{HF_EMBEDDING[module]}.token_adapter.trainable_tokens_delta"] = tensor
        else:
            out[f"base_model.model.transformer.{module_names[module]}.{kind}.weight"] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def peft_config(lora: dict, config: GPTConfig) -> dict:
    """adapter_config.json: PEFT's LoraConfig for this adapter (PEFT fills in the fields left out)."""
    out = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": lora["base"]["path"],
        "r": lora["rank"],
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "target_modules": [PEFT_TARGETS[t] for t in lora["targets"]],
        "fan_in_fan_out": True,  # GPT-2's Conv1D layers store (in, out)
        "bias": "none",
        "inference_mode": True,
    }
    if lora.get("new_rows"):
        rows = list(range(*lora["new_rows"]))
        out["trainable_token_indices"] = rows if config.tie_embeddings else {"wte": rows, "lm_head": rows}
    return out


def export_peft(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the adapter of a LoRA checkpoint (or run) as a PEFT adapter folder, atomically."""
    out = Path(out)
    check_output_folder(out, overwrite)
    resolved = lora_checkpoint(checkpoint)
    meta = read_checkpoint_config(resolved)
    verify_checkpoint(resolved, (WEIGHTS,))
    config = GPTConfig.from_dict(meta["model"])
    with atomic_folder(out) as tmp:
        save_file(peft_state(load_file(resolved / WEIGHTS), config), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_config(meta["lora"], config), indent=2) + "\n")
    return out
