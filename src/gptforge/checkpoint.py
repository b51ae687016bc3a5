"""Checkpoints: a folder written under a temporary name and renamed into place only when complete.

    step-00000100/
      model.safetensors   weights (a tied LM head is stored once, as tok_emb.weight)
      train_state.pt      optimizer, schedule, step, RNG states (optional; torch.load weights_only)
      config.json         model + train config, and the sha256 of every other file; written last
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import GPTConfig
from .errors import UserError
from .files import atomic_folder
from .model import GPT

WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
CONFIG = "config.json"
TIED_KEY = "lm_head.weight"  # same tensor as tok_emb.weight


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: GPT, train_config: dict | None = None,
                    train_state: dict | None = None, weights: dict | None = None) -> Path:
    """Write a complete checkpoint folder at `path` (see atomic_folder).
    `weights` replaces model.state_dict() (a sharded model's gathered full state)."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        weights = {k: v.detach().contiguous().cpu()
                   for k, v in (model.state_dict() if weights is None else weights).items()
                   if not (k == TIED_KEY and model.config.tie_embeddings)}
        save_file(weights, tmp / WEIGHTS)
        files = [WEIGHTS]
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
            files.append(TRAIN_STATE)
        meta = {
            "format": "gptforge-checkpoint-v1",
            "model": model.config.to_dict(),
            "train": train_config or {},
            "files": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")  # last: marks it complete
    return path


def is_complete(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete step-XXXXXXXX checkpoint of a run folder, or None."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    steps = sorted((p for p in folder.glob("step-*") if is_complete(p)), key=lambda p: p.name)
    return steps[-1] if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (its newest complete checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if is_complete(path):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"{path} is neither a checkpoint nor a run folder with a complete checkpoint")
    return latest


def read_checkpoint_config(path: Path) -> dict:
    try:
        meta = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path / CONFIG}: {e}") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise UserError(f"{path / CONFIG} is not a gptforge checkpoint config")
    return meta


def verify_file(path: Path, meta: dict, name: str) -> None:
    expected = meta.get("files", {}).get(name)
    if expected is not None and _sha256(path / name) != expected:
        raise UserError(f"checkpoint file {path / name} is corrupt (its sha256 does not match config.json)")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Load a GPT from a checkpoint folder, a run folder or a Hugging Face GPT-2 folder, in eval mode."""
    from .hf import is_hf_folder, load_hf_model  # hf imports this module

    if is_hf_folder(path):
        return load_hf_model(path, device)
    path = resolve_checkpoint(path)
    meta = read_checkpoint_config(path)
    config = GPTConfig.from_dict(meta["model"])
    verify_file(path, meta, WEIGHTS)
    try:
        weights = load_file(path / WEIGHTS, device=str(device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read weights {path / WEIGHTS}: {e}") from None
    with torch.device("meta"):
        model = GPT(config)
    load_weights(model, weights, source=str(path / WEIGHTS))
    return model.eval()


def load_train_state(path: Path, device: str | torch.device = "cpu") -> dict:
    """The optimizer/step/RNG state of a checkpoint; tensors are mapped to `device`."""
    meta = read_checkpoint_config(path)
    if not (path / TRAIN_STATE).is_file():
        raise UserError(f"{path} has no {TRAIN_STATE}; it holds weights only and cannot be resumed")
    verify_file(path, meta, TRAIN_STATE)
    try:
        return torch.load(path / TRAIN_STATE, map_location=device, weights_only=True)
    except Exception as e:  # a truncated zip, or a pickle that weights_only refuses
        raise UserError(f"cannot load {path / TRAIN_STATE}: {str(e).splitlines()[0]}") from None


def load_weights(model: GPT, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy a checkpoint's tensors into a model (possibly on the meta device), naming any mismatch."""
    expected = {k: v for k, v in model.state_dict().items()
                if not (k == TIED_KEY and model.config.tie_embeddings)}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{source} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(weights, strict=False, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight  # re-tie after assign replaced the parameter
