"""What a model path can be, decided in one place: `load_any`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..model import GPT
from .checkpoint import is_complete, list_checkpoints, load_checkpoint
from .hf import is_hf_folder, load_hf_model, looks_like_hub_id


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


def load_any(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """A model in eval mode from any of: a gptforge checkpoint folder (its weights checked
    against their sha256), a run folder (its newest checkpoint), a Hugging Face GPT-2, Llama or Qwen3 folder, or
    a Hugging Face hub id (fetched when online, or from the cache)."""
    resolved = Path(resolve_model_path(path))
    if resolved.exists() and not is_hf_folder(resolved):
        return load_checkpoint(resolved, device)
    return load_hf_model(resolved, device)  # a folder, a hub id, or an error that says what to do
