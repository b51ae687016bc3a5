"""Our checkpoints: a folder written under a temporary name and renamed into place only when complete.

    step-00000100/
      model.safetensors   weights (a tied LM head is stored once, as tok_emb.weight)
      train_state.pt      optimizer, schedule, step, RNG states (optional; torch.load weights_only)
      tokenizer/          the model's tokenizer (tokenizer.json + meta.json) unless it is GPT-2's
      config.json         model + train config, the tokenizer's description, and the sha256 of
                          the weights and train state; written last

A LoRA checkpoint has the same files, but model.safetensors holds only the adapter, and config.json
records under "lora" its settings and its base model (path and weights sha256; see weights.load).
A run folder keeps them as checkpoints/step-XXXXXXXX. This module is the checkpoint boundary of
the model's vocabulary padding: weights and optimizer moments are saved with vocab_size rows
(so a checkpoint does not depend on the padding) and padded again on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import GPTConfig
from ..errors import UserError, first_line
from ..files import atomic_folder, read_json, sha256_file
from ..model import GPT
from ..model.gpt import VOCAB_ROW_PARAMS, vocab_rows
from ..model.lora import adapter_state
from ..tokenizer import TOKENIZER_DIR, Tokenizer, tokenizer_from_record, tokenizer_of

WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
CONFIG = "config.json"
TIED_KEY = "lm_head.weight"  # same tensor as tok_emb.weight
CHECKPOINTS = "checkpoints"  # the folder of a run that holds its checkpoints


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def _moments(optimizer_state: dict, config: GPTConfig, padded: bool) -> None:
    """Resize, in place, the optimizer moments of the matrices with padded vocabulary rows."""
    for name in VOCAB_ROW_PARAMS:
        moments = optimizer_state.get("state", {}).get(name, {})
        for key, t in moments.items():
            moments[key] = vocab_rows(t, config, padded)


def save_checkpoint(path: str | Path, model: GPT, train_config: dict | None = None,
                    train_state: dict | None = None, weights: dict | None = None) -> Path:
    """Write a complete checkpoint folder at `path` (see atomic_folder), with the model's own
    tokenizer (tokenizer_of). `weights` replaces model.state_dict() (a sharded model's gathered
    full state, which still has padded rows). A model with LoRA adapters (its `lora` attribute
    says how they were made, and from which base) saves only the adapter, and that record (see
    weights.load.load_lora)."""
    path = Path(path)
    config = model.config
    tokenizer = tokenizer_of(model)
    weights = model.state_dict() if weights is None else weights
    lora = getattr(model, "lora", None)
    if lora is not None:
        if "base" not in lora:
            raise ValueError("a LoRA model is saved with its base model's identity in model.lora['base'] "
                             "(see weights.load.base_identity)")
        weights = adapter_state(weights, config.tie_embeddings)
        base = lora["base"]
        lora = {**lora, "base": {**base, "relative": os.path.relpath(base["path"], path.resolve())}}
    with atomic_folder(path) as tmp:
        weights = {k: (vocab_rows(v, config, padded=False) if k in VOCAB_ROW_PARAMS else v).detach().contiguous().cpu()
                   for k, v in weights.items() if not (k == TIED_KEY and config.tie_embeddings)}
        save_file(weights, tmp / WEIGHTS)
        files = [WEIGHTS]
        if train_state is not None:
            _moments(train_state.get("optimizer", {}), config, padded=False)
            torch.save(train_state, tmp / TRAIN_STATE)
            files.append(TRAIN_STATE)
        tokenizer.save(tmp / TOKENIZER_DIR)
        meta = {
            "format": "gptforge-checkpoint-v1",
            "model": config.to_dict(),
            "train": train_config or {},
            "tokenizer": tokenizer.describe(),
            "files": {name: sha256_file(tmp / name) for name in files},
        }
        if lora is not None:
            meta["lora"] = lora
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")  # last: marks it complete
    return path


def is_complete(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete step-XXXXXXXX checkpoints of a run folder, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step-*") if is_complete(p)), key=lambda p: p.name)


def read_checkpoint_config(path: Path) -> dict:
    meta = read_json(path / CONFIG)
    if not isinstance(meta, dict) or "model" not in meta:
        raise UserError(f"{path / CONFIG} is not a gptforge checkpoint config")
    return meta


def verify_checkpoint(path: Path, names: tuple[str, ...] = (WEIGHTS, TRAIN_STATE)) -> None:
    """Check that each of the named files the checkpoint has matches the sha256 in its config.json."""
    meta = read_checkpoint_config(path)
    for name in names:
        expected = meta.get("files", {}).get(name)
        if (path / name).is_file() and expected is not None and sha256_file(path / name) != expected:
            raise UserError(f"checkpoint file {path / name} is corrupt (its sha256 does not match config.json)")


def newest_intact_checkpoint(run_dir: Path, names: tuple[str, ...], say) -> Path | None:
    """The newest checkpoint of a run whose named files are all intact, saying (through `say`)
    which newer ones were skipped as corrupt; None if the run has no checkpoint at all."""
    checkpoints = list_checkpoints(run_dir)
    skipped = []
    for path in reversed(checkpoints):
        try:
            verify_checkpoint(path, names)
        except UserError as e:
            skipped.append(path.name)
            say(f"warning: {e}")
            continue
        if skipped:
            say(f"using {path.name}, the newest intact checkpoint (skipped {', '.join(skipped)})")
        return path
    if checkpoints:
        raise UserError(f"every checkpoint of {run_dir} is corrupt ({', '.join(skipped)}); nothing to load")
    return None


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


def checkpoint_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer a checkpoint's model was trained with (GPT-2's for a checkpoint from before
    tokenizers were recorded); refused in one line when its files are missing or altered."""
    return tokenizer_from_record(read_checkpoint_config(path).get("tokenizer"), path / TOKENIZER_DIR,
                                 f"checkpoint {path}")


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> GPT:
    """The model of a checkpoint folder (weights verified against their sha256), in eval mode,
    with its tokenizer as `model.tokenizer`."""
    meta = read_checkpoint_config(path)
    config = GPTConfig.from_dict(meta["model"])
    tokenizer = checkpoint_tokenizer(path)
    verify_checkpoint(path, (WEIGHTS,))
    try:
        weights = load_file(path / WEIGHTS, device=str(device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read weights {path / WEIGHTS}: {e}") from None
    with torch.device("meta"):
        model = GPT(config)
    load_weights(model, weights, source=str(path / WEIGHTS))
    model.tokenizer = tokenizer
    return model.eval()


def load_train_state(path: Path, device: str | torch.device = "cpu") -> dict:
    """The optimizer/step/RNG state of a checkpoint (verified against its sha256), tensors on
    `device`, the optimizer moments padded to the model's vocabulary rows."""
    if not (path / TRAIN_STATE).is_file():
        raise UserError(f"{path} has no {TRAIN_STATE}; it holds weights only and cannot be resumed")
    verify_checkpoint(path, (TRAIN_STATE,))
    try:
        state = torch.load(path / TRAIN_STATE, map_location=device, weights_only=True)
    except Exception as e:  # a truncated zip, or a pickle that weights_only refuses
        raise UserError(f"cannot load {path / TRAIN_STATE}: {first_line(e)}") from None
    _moments(state.get("optimizer", {}), GPTConfig.from_dict(read_checkpoint_config(path)["model"]), padded=True)
    return state
