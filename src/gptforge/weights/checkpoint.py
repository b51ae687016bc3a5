"""Our checkpoints: a folder written under a temporary name and renamed into place only when complete.

    step-00000100/
      model.safetensors   weights (a tied LM head is stored once, as tok_emb.weight)
      train_state.pt      optimizer, schedule, step, RNG states (optional; torch.load weights_only)
      tokenizer/          the model's tokenizer (tokenizer.json + meta.json) unless it is GPT-2's
      config.json         model + train config, the tokenizer's description, and the sha256 of
                          every other file (weights, train state, tokenizer); written last

A LoRA checkpoint has the same files, but model.safetensors holds only the adapter, and config.json
records under "lora" its settings and its base model (path and weights sha256; see weights.load).
A run folder keeps them as checkpoints/step-XXXXXXXX; one that failed verification is set aside
as step-XXXXXXXX.corrupt (evidence, never read as a checkpoint again). This module is the checkpoint boundary of
the model's vocabulary padding: weights and optimizer moments are saved with vocab_size rows
(so a checkpoint does not depend on the padding) and padded again on load.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import sys
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import GPTConfig
from ..errors import UserError, first_line
from ..files import Output, atomic_folder, read_json, sha256_file, write_file
from ..model import GPT
from ..model.classifier import Classifier
from ..model.gpt import VOCAB_ROW_PARAMS, vocab_rows
from ..model.lora import adapter_state
from ..tokenizer import TOKENIZER_DIR, Tokenizer, tokenizer_from_record, tokenizer_of

WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
CONFIG = "config.json"
TIED_KEY = "lm_head.weight"  # same tensor as tok_emb.weight
CHECKPOINTS = "checkpoints"  # the folder of a run that holds its checkpoints
CHECKPOINT_NAME = re.compile(r"step-\d{8}")  # a run's checkpoint folder; step-N.corrupt is not one
LOADABLE = (torch.float32, torch.float16, torch.bfloat16)  # the dtypes a model's weights may have
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, a failing one); nothing was replaced."""


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
    lora = model.lora
    if lora is not None:
        if "base" not in lora:
            raise ValueError("a LoRA model is saved with its base model's identity: add_lora(..., "
                             "base=weights.load.base_identity(BASE))")
        weights = adapter_state(weights, config.tie_embeddings)
        base = lora["base"]
        lora = {**lora, "base": {**base, "relative": os.path.relpath(base["path"], path.resolve())}}
    weights = {k: (vocab_rows(v, config, padded=False) if k in VOCAB_ROW_PARAMS else v).detach().contiguous().cpu()
               for k, v in weights.items() if not (k == TIED_KEY and config.tie_embeddings)}
    if train_state is not None:
        _moments(train_state.get("optimizer", {}), config, padded=False)
    try:
        with atomic_folder(path) as tmp:
            _write_files(tmp, weights, train_state, tokenizer, {
                "format": "gptforge-checkpoint-v1", "model": config.to_dict(), "train": train_config or {},
                "tokenizer": tokenizer.describe(), **({"lora": lora} if lora is not None else {}),
                **classifier_record(model)})
    except OSError as e:  # the folder's temporary copy is gone, and what was at `path` is untouched
        raise write_failure(path, e) from None
    return path


def classifier_record(model: GPT) -> dict:
    """What a checkpoint's config.json says of a classifier (model.classifier): {"classifier":
    its class names in id order and its pad id}; nothing for a language model."""
    if not isinstance(model, Classifier):
        return {}
    return {"classifier": {"classes": model.classes, "pad_id": model.pad_id}}


def model_of(config: GPTConfig, meta: dict, tokenizer: Tokenizer) -> GPT:
    """The empty model a checkpoint's config.json describes, with its tokenizer: a GPT, or a Classifier."""
    record = meta.get("classifier")
    return GPT(config, tokenizer) if record is None else Classifier(config, record["classes"], record["pad_id"],
                                                                   tokenizer)


def _write_files(folder: Path, weights: dict, train_state: dict | None, tokenizer: Tokenizer, meta: dict) -> None:
    """A checkpoint's files in `folder`, config.json (with every other file's sha256) last: it marks
    the checkpoint complete."""
    write_file(folder / WEIGHTS, lambda f: write_safetensors(f, weights))
    if train_state is not None:
        write_file(folder / TRAIN_STATE, lambda f: torch.save(train_state, f))
    tokenizer.save(folder / TOKENIZER_DIR)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    meta["files"] = {name: sha256_file(folder / name) for name in files}
    write_file(folder / CONFIG, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))


def write_failure(path: Path, error: OSError) -> CheckpointWriteError:
    """The one line that says a checkpoint could not be written, and why (in lower case: it ends
    a sentence)."""
    reason = error.strerror or first_line(error)
    return CheckpointWriteError(f"could not write checkpoint {path}: {reason[:1].lower()}{reason[1:]}")


def write_safetensors(f: Output, tensors: dict[str, torch.Tensor]) -> None:
    """Contiguous CPU tensors in the safetensors format, one tensor at a time through `f` (the
    library's writer would need the whole file in memory, or write it where errors lose their
    errno). Tensors of larger elements come first, so that each one's data stays aligned."""
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} has no safetensors name here")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)) + text)
    for name in order:
        if tensors[name].numel():
            f.write(tensors[name].reshape(-1).view(torch.uint8).numpy().data)


def is_complete(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete step-XXXXXXXX checkpoints of a run folder, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step-*") if CHECKPOINT_NAME.fullmatch(p.name) and is_complete(p)),
                  key=lambda p: p.name)


def read_checkpoint_config(path: Path) -> dict:
    meta = read_json(path / CONFIG)
    if not isinstance(meta, dict) or "model" not in meta:
        raise UserError(f"{path / CONFIG} is not a gptforge checkpoint config")
    return meta


def verify_checkpoint(path: Path, names: tuple[str, ...] | None = None) -> None:
    """Check that each of the named files the checkpoint has matches the sha256 in its config.json;
    by default every file it records, and its tokenizer against the description it records."""
    meta = read_checkpoint_config(path)
    if names is None:
        checkpoint_tokenizer(path)  # first: it names a missing tokenizer folder best
    recorded = meta.get("files", {})
    for name in recorded if names is None else names:
        expected = recorded.get(name)
        if (path / name).is_file() and expected is not None and sha256_file(path / name) != expected:
            raise UserError(f"checkpoint file {path / name} is corrupt (its sha256 does not match config.json)")
        if names is None and not (path / name).is_file():
            raise UserError(f"checkpoint file {path / name} is missing")


def newest_intact_checkpoint(run_dir: Path, say, set_aside_skipped: bool = False) -> Path | None:
    """The newest checkpoint of a run whose files are all intact (verify_checkpoint), saying
    (through `say`) which newer ones were skipped as corrupt, and with `set_aside_skipped` moving
    those aside (set_aside: the run goes on from an older one, and they must not pass for newer);
    None if the run has no checkpoint at all. Nothing is moved when every one is corrupt."""
    checkpoints = list_checkpoints(run_dir)
    skipped: list[tuple[Path, UserError]] = []
    for path in reversed(checkpoints):
        try:
            verify_checkpoint(path)
        except UserError as e:
            skipped.append((path, e))
            continue
        for _, error in skipped:  # said only now: when none is intact, the refusal is the one line
            say(f"warning: {error}")
        if skipped:
            say(f"using {path.name}, the newest intact checkpoint "
                f"(skipped {', '.join(p.name for p, _ in skipped)})")
            for corrupt, _ in skipped if set_aside_skipped else ():
                set_aside(corrupt, say)
        return path
    if checkpoints:
        raise UserError(f"every checkpoint of {run_dir} is corrupt ({', '.join(p.name for p, _ in skipped)}); "
                        f"nothing to load (newest: {skipped[0][1]})")
    return None


def set_aside(checkpoint: Path, say) -> Path:
    """Rename a checkpoint that failed verification to step-N.corrupt (kept as evidence, never read
    or pruned as a checkpoint again), saying so."""
    target, n = checkpoint.with_name(checkpoint.name + ".corrupt"), 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"{checkpoint.name}.corrupt-{n}")
    checkpoint.rename(target)
    say(f"{checkpoint.name} failed verification: set aside as {target}")
    return target


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
        if tensor.dtype not in LOADABLE:
            raise UserError(f"{source}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; a model's "
                            f"weights are float32, float16 or bfloat16")
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(weights, strict=False, assign=True)
    if model.config.tie_embeddings and hasattr(model, "lm_head"):  # a Classifier has no LM head
        model.lm_head.weight = model.tok_emb.weight  # re-tie after assign replaced the parameter


def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """The names of a model's weights that hold a NaN or an infinity."""
    return [name for name, w in model.state_dict().items()
            if w.is_floating_point() and not w.is_meta and not torch.isfinite(w).all()]


def check_finite(model: torch.nn.Module, source: str, nonfinite: str = "warn") -> None:
    """Say (on stderr) that a model's weights hold NaN or inf, or with nonfinite="refuse" refuse it
    in one line: such a model's logits are NaN, and it cannot generate text."""
    names = nonfinite_tensors(model)
    if not names:
        return
    what = f"{source}: {len(names)} weight tensor(s) hold NaN or inf ({', '.join(names[:3])})"
    if nonfinite == "refuse":
        raise UserError(f"{what}; such a model cannot generate text (pass --allow-nonfinite to load it anyway)")
    print(f"warning: {what}", file=sys.stderr)


def checkpoint_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer a checkpoint's model was trained with (GPT-2's for a checkpoint from before
    tokenizers were recorded); refused in one line when its files are missing or altered."""
    return tokenizer_from_record(read_checkpoint_config(path).get("tokenizer"), path / TOKENIZER_DIR,
                                 f"checkpoint {path}")


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> GPT:
    """The model of a checkpoint folder (weights verified against their sha256), in eval mode,
    carrying its tokenizer (GPT.tokenizer)."""
    meta = read_checkpoint_config(path)
    config = GPTConfig.from_dict(meta["model"])
    tokenizer = checkpoint_tokenizer(path)
    verify_checkpoint(path, (WEIGHTS,))
    try:
        weights = load_file(path / WEIGHTS, device=str(device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read weights {path / WEIGHTS}: {e}") from None
    with torch.device("meta"):
        model = model_of(config, meta, tokenizer)
    load_weights(model, weights, source=str(path / WEIGHTS))
    return model.eval()


def load_train_state(path: Path, device: str | torch.device = "cpu") -> dict:
    """The optimizer/step/RNG state of a checkpoint (verified against its sha256), tensors on
    `device`, the optimizer moments padded to the model's vocabulary rows."""
    if not (path / TRAIN_STATE).is_file():
        raise UserError(f"{path} has no {TRAIN_STATE}; it holds weights only and cannot be resumed")
    verify_checkpoint(path, (TRAIN_STATE,))
    try:
        with warnings.catch_warnings():  # torch's notes on what it refuses: the refusal below says it
            warnings.simplefilter("ignore")
            state = torch.load(path / TRAIN_STATE, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # a pickle of other objects: never unpickled (torch's advice not repeated)
        raise UserError(f"{path / TRAIN_STATE} is not a gptforge train state (it holds Python objects "
                        "other than tensors and plain data); refused") from None
    except Exception as e:  # a truncated zip, not a torch file at all
        raise UserError(f"{path / TRAIN_STATE} is not a gptforge train state ({first_line(e)})") from None
    if not (isinstance(state, dict) and isinstance(state.get("position"), dict) and "optimizer" in state):
        raise UserError(f"{path / TRAIN_STATE} is not a gptforge train state (no optimizer and position)")
    _moments(state.get("optimizer", {}), GPTConfig.from_dict(read_checkpoint_config(path)["model"]), padded=True)
    return state
