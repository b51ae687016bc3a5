"""What a model path can be, decided in one place: `load_any`. A LoRA checkpoint (see
`load_lora`) is one of the things it can be: an adapter, plus the identity of the base model it
adapts, which is found again and checked when the adapter is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import GPTConfig
from ..errors import UserError
from ..files import sha256_file
from ..model import GPT
from ..model.classifier import as_classifier
from ..model.lora import add_lora, load_adapter, merge_lora
from ..model.vocab import grow_vocabulary
from .checkpoint import (
    TIED_KEY,
    WEIGHTS,
    check_finite,
    checkpoint_tokenizer,
    is_complete,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    read_checkpoint_config,
    verify_checkpoint,
)
from .hf import _weight_files, is_hf_folder, load_hf_model, looks_like_hub_id, resolve_hf_folder


def resolve_model_path(path: str | Path) -> str | Path:
    """What `path` names: a checkpoint folder as it is, a run folder's newest complete
    checkpoint, a Hugging Face folder as it is; anything that does not exist is left to be
    tried as a hub id."""
    path = Path(path)
    if not path.exists() and not looks_like_hub_id(str(path)):
        raise UserError(f"no such checkpoint, run folder or Hugging Face model folder: {path}")
    if not path.exists() or is_hf_folder(path) or is_complete(path):
        return path
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise UserError(f"{path} is neither a checkpoint, a run folder with a complete checkpoint, "
                        "nor a Hugging Face model folder")
    return checkpoints[-1]


def load_any(path: str | Path, device: str | torch.device = "cpu", base: str | Path | None = None,
             nonfinite: str = "warn") -> GPT:
    """A model in eval mode from any of: a gptforge checkpoint folder (its weights checked
    against their sha256), a run folder (its newest checkpoint), a LoRA checkpoint or run (its
    base model, found where it was or at `base`, with the adapter merged in), a Hugging Face
    GPT-2, Llama or Qwen3 folder, or a Hugging Face hub id (fetched when online, or from the cache).
    Weights that hold NaN or inf are said on stderr, or refused with nonfinite="refuse" (check_finite)."""
    resolved = Path(resolve_model_path(path))
    if resolved.exists() and not is_hf_folder(resolved):
        if "lora" in read_checkpoint_config(resolved):
            model = merge_lora(load_lora(resolved, device, base)).eval()
        else:
            model = load_checkpoint(resolved, device)
    else:
        model = load_hf_model(resolved, device)  # a folder, a hub id, or an error that says what to do
    check_finite(model, str(resolved), nonfinite)
    return model


def reshape(source: GPT, context_length: int, dropout: float) -> GPT:
    """`source`'s weights in a model with a context of `context_length` and another dropout. With
    learned positions the context is at most the model's own (the first positions' embeddings are
    kept, which is how a shorter-context run reuses GPT-2); rotary positions have no such limit."""
    src = source.config
    if context_length > src.context_length and src.positions == "learned":
        raise UserError(f"--context-length {context_length} is longer than the --init-from model's "
                        f"{src.context_length} (it has no position embeddings beyond that)")
    config = dataclasses.replace(src, context_length=context_length, dropout=dropout)
    weights = {k: v for k, v in source.state_dict().items() if not (k == TIED_KEY and src.tie_embeddings)}
    if "pos_emb.weight" in weights:
        weights["pos_emb.weight"] = weights["pos_emb.weight"][:context_length]
    with torch.device("meta"):
        model = GPT(config, source.tokenizer)
    load_weights(model, weights, source="the initial weights")
    return model


# --- the base model of a LoRA adapter ---------------------------------------------------------

def weights_sha256(path: str | Path) -> str:
    """What identifies a model's weights: for our checkpoint, the sha256 of its model.safetensors
    (recorded in its config.json and checked when it loads); for a Hugging Face folder, the sha256
    of its weight file, or of the lines "NAME SHA256" of its shards."""
    resolved = Path(resolve_model_path(path))
    if not resolved.exists():
        resolved = resolve_hf_folder(resolved)  # a hub id: its local snapshot
    if is_hf_folder(resolved):
        files = _weight_files(resolved)
        if len(files) == 1:
            return sha256_file(files[0])
        return hashlib.sha256("".join(f"{f.name} {sha256_file(f)}\n" for f in files).encode()).hexdigest()
    meta = read_checkpoint_config(resolved)
    if "lora" in meta:
        raise UserError(f"{resolved} is a LoRA checkpoint; merge it first (gptforge convert --merge-lora "
                        f"{resolved} --out DIR) to use it as the base of another adapter")
    recorded = meta.get("files", {}).get(WEIGHTS)
    return recorded or sha256_file(resolved / WEIGHTS)


def base_identity(spec: str | Path) -> dict:
    """The base model of a new adapter, as a LoRA checkpoint records it: the resolved path (a run
    folder's newest checkpoint, a hub id's local snapshot) and weights_sha256 of it."""
    resolved = Path(resolve_model_path(spec))
    if not resolved.exists():
        resolved = resolve_hf_folder(resolved)
    return {"path": str(resolved.resolve()), "sha256": weights_sha256(resolved)}


def lora_checkpoint(path: str | Path) -> Path:
    """The checkpoint a LoRA checkpoint or run names; one line when it holds no adapter."""
    resolved = Path(resolve_model_path(path))
    if not (resolved.is_dir() and not is_hf_folder(resolved) and "lora" in read_checkpoint_config(resolved)):
        raise UserError(f"{path} is not a LoRA checkpoint (fine-tune with --lora-rank to make one)")
    return resolved


def find_base(checkpoint: Path, lora: dict, base: str | Path | None = None) -> Path:
    """The base model of a LoRA checkpoint: `base` when given, else the recorded path, else the
    same path relative to the checkpoint (a folder moved together with its base); refused in one
    line when its weights are not the ones the adapter was trained on."""
    recorded = lora["base"]
    if base is None:
        candidates = [Path(recorded["path"]), checkpoint / recorded.get("relative", recorded["path"])]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise UserError(f"{checkpoint} is a LoRA adapter whose base model {recorded['path']} is missing; "
                            "pass the base model's path (--base)")
        base = found[0]
    actual = weights_sha256(base)
    if actual != recorded["sha256"]:
        raise UserError(f"{checkpoint} is a LoRA adapter for another base model: it was trained on weights "
                        f"with sha256 {recorded['sha256'][:12]}..., {base} has {actual[:12]}...")
    return Path(base)


def load_lora(checkpoint: Path, device: str | torch.device = "cpu", base: str | Path | None = None) -> GPT:
    """A LoRA checkpoint's base model (checked, see find_base) with its adapter, not merged:
    shaped as the fine-tuned model (context, dropout, grown vocabulary), in eval mode."""
    meta = read_checkpoint_config(checkpoint)
    config, lora = GPTConfig.from_dict(meta["model"]), meta["lora"]
    model = load_any(find_base(checkpoint, lora, base), device)
    model = grow_vocabulary(reshape(model, config.context_length, config.dropout), config.vocab_size,
                            checkpoint_tokenizer(checkpoint))
    if "classifier" in meta:  # its head is part of the adapter (model.lora.is_adapter_key)
        model = as_classifier(model, meta["classifier"]["classes"], meta["classifier"]["pad_id"])
    add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], tuple(lora["targets"]),
             tuple(lora["new_rows"]) if lora.get("new_rows") else None, base=lora["base"])
    verify_checkpoint(checkpoint, (WEIGHTS,))
    try:
        adapter = load_file(checkpoint / WEIGHTS, device=str(device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read adapter {checkpoint / WEIGHTS}: {e}") from None
    try:
        load_adapter(model, adapter, str(checkpoint / WEIGHTS))
    except ValueError as e:
        raise UserError(str(e)) from None
    return model.eval()


def resumed_model(checkpoint: Path, device: str | torch.device = "cpu") -> GPT:
    """The model of a fine-tuning checkpoint: all its weights, or its base with its adapter
    (refused when the base is not the one it was trained on)."""
    if "lora" in read_checkpoint_config(checkpoint):
        return load_lora(checkpoint, device)
    return load_checkpoint(checkpoint, device)
