"""Weights in and out of the Hugging Face format (the folders transformers reads and writes), so
users can start from OpenAI's released GPT-2 weights and take their models to the tools that read
that format: GPT-2 models as GPT2LMHeadModel, the modern block as Llama or Qwen3 (hf_archs says
which configs match which architecture, and where each tensor goes).

A Hugging Face folder holds config.json and model.safetensors or pytorch_model.bin (or shards of
either, listed in an .index.json). transformers is not needed here; the tests use it as the
independent reference.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import GPTConfig
from ..errors import UserError, first_line
from ..files import atomic_folder, check_output_folder, read_json
from ..model import GPT
from ..model.classifier import Classifier
from ..tokenizer import EOT_TOKEN, BPETokenizer, Tokenizer, gpt2, tokenizer_of
from ..tokenizer.chat import CHAT_TEMPLATE_JINJA, end_of_turn, has_chat_template
from ..tokenizer.gpt2_bpe import asset_path
from .checkpoint import load_weights
from .hf_archs import classifier_config, hf_config, hf_family, parse_hf_config, tensor_map

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PT_BIN, PT_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# Causal-mask buffers that older transformers versions saved with the weights; not weights.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# What a hub id looks like ("gpt2", "openai-community/gpt2-xl"); anything else is only a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


# --- reading -------------------------------------------------------------------------------------

def is_hf_folder(path: str | Path) -> bool:
    """A folder whose config.json is a transformers config (it names a model_type; ours never do)."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def looks_like_hub_id(name: str) -> bool:
    """Whether a name that is no local path could be a Hugging Face hub id ("gpt2", "org/name")."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def resolve_hf_folder(name_or_path: str | Path) -> Path:
    """A local folder as it is; a hub id through huggingface_hub when it is installed (its cache
    answers offline too); otherwise an error that says how to point at a local folder."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{path} is a file; pass the Hugging Face model folder that holds config.json")
    name = str(name_or_path)
    if not looks_like_hub_id(name):
        raise UserError(f"Hugging Face model folder not found: {path}")
    advice = (f"download it where there is a network (e.g. `hf download {name} --local-dir "
              f"{name.split('/')[-1]}`) and pass that local folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{name!r} is not a local folder (huggingface_hub, which could fetch it "
                        f"from the Hub, is not installed); {advice}") from None
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, no such repo, no network: all the same answer to the user
        reason = first_line(e).split(". ")[0][:160]
        raise UserError(f"{name!r} is not a local folder and could not be fetched from the "
                        f"Hugging Face Hub ({reason}); {advice}") from None


def read_hf_config(folder: Path) -> tuple[GPTConfig, str]:
    """Our config and the architecture family of a Hugging Face folder (see hf_archs)."""
    path = folder / CONFIG
    raw = read_json(path, ": not a Hugging Face model folder")
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a JSON object")
    if "model_type" not in raw:
        raise UserError(f"{folder} is not a Hugging Face model folder (its config.json names no "
                        "model_type)")
    return parse_hf_config(raw, path)


def _weight_files(folder: Path) -> list[Path]:
    """The files holding the weights: safetensors first, then pytorch_model.bin; single or sharded."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (PT_BIN, PT_BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"cannot read {folder / index}: {first_line(e)}") from None
            for shard in shards:
                if not (folder / shard).is_file():
                    raise UserError(f"{folder / index} lists {shard}, which is missing")
            return [folder / shard for shard in shards]
    raise UserError(f"{folder} has no weights: expected {SAFETENSORS} or {PT_BIN} "
                    "(or a sharded .index.json of either)")


@contextmanager
def _reading(file: Path) -> Iterator[None]:
    """Turn whatever a damaged or hostile weight file raises into one clear line."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise UserError(f"refusing to load {file}: it holds more than tensors, and unpickling "
                            "it could run code (torch.load with weights_only=True rejected it)") from None
        raise UserError(f"cannot read {file}: {first_line(e)}") from None


def _open_tensors(file: Path) -> dict[str, Callable[[], torch.Tensor]]:
    """Name -> loader of that tensor, so the caller can read one tensor at a time."""
    if file.name.endswith(".safetensors"):
        handle = safe_open(str(file), framework="pt")  # memory-mapped; get_tensor reads one tensor
        return {key: functools.partial(handle.get_tensor, key) for key in handle.keys()}
    # weights_only: a pickle may name any callable, and only this refuses to call it.
    # mmap (zip-format files only) leaves the data on disk until each tensor is copied out.
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{file} is not a state dict (a mapping of names to tensors)")
    return {key: (lambda t=tensor: t) for key, tensor in state.items()}


def read_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: ours when export_hf wrote a tokenizer.json for
    PreTrainedTokenizerFast, else GPT-2's (with any additional special tokens its
    tokenizer_config.json lists, which transformers adds after GPT-2's ids in that order)."""
    config_path = folder / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a JSON object")
    if config.get("tokenizer_class") == "PreTrainedTokenizerFast" and (folder / "tokenizer.json").is_file():
        return BPETokenizer((folder / "tokenizer.json").read_bytes(), where=str(folder / "tokenizer.json"))
    return gpt2().with_special_tokens([str(t) for t in config.get("additional_special_tokens") or []])


def load_hf_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """A GPT with the weights of a Hugging Face GPT-2, Llama or Qwen3 folder (or hub id), in
    float32 and eval mode, carrying the folder's tokenizer (see read_tokenizer).

    The model is built on the meta device and each tensor is read, transposed if needed and
    copied to `device` one at a time, so memory holds one copy of the weights plus one tensor.
    """
    folder = resolve_hf_folder(name_or_path)
    config, family = read_hf_config(folder)
    with torch.device("meta"):
        model = GPT(config, read_tokenizer(folder))  # shapes only; the tensors loaded below replace its parameters
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    mapping = tensor_map(config, family)
    names = {hf: ours for ours, (parts, _) in mapping.items() for hf in parts}

    loaders: dict[str, tuple[Path, Callable[[], torch.Tensor]]] = {}
    for file in _weight_files(folder):
        with _reading(file):
            for key, load in _open_tensors(file).items():
                loaders[key.removeprefix("transformer.")] = (file, load)
    for key in [k for k in loaders if _MASK_BUFFER.fullmatch(k)]:
        del loaders[key]
    if config.tie_embeddings:
        loaders.pop("lm_head.weight", None)  # transformers ties it to wte whatever the file holds
    missing, unexpected = sorted(set(names) - set(loaders)), sorted(set(loaders) - set(names))
    if missing or unexpected:
        raise UserError(f"the weights in {folder} do not match its config.json: missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}")

    weights: dict[str, torch.Tensor] = {}
    for name, (parts, conv) in mapping.items():
        want = shapes[name][::-1] if conv else (shapes[name][0] // len(parts), *shapes[name][1:])
        tensors = []
        for hf_name in parts:
            file, load = loaders.pop(hf_name)
            with _reading(file):
                tensor = load()
            if tensor.shape != want:
                raise UserError(f"{file}: {hf_name} has shape {tuple(tensor.shape)}, but config.json "
                                f"implies {tuple(want)}")
            tensors.append(tensor.t() if conv else tensor)  # Conv1D (in, out) -> Linear (out, in)
            del tensor, load
        # A fresh contiguous float32 copy; the source tensors (or their mapped pages) are then dropped.
        weights[name] = torch.empty(shapes[name], dtype=torch.float32, device=device)
        for rows, tensor in zip(weights[name].chunk(len(parts)), tensors):  # parts stack by rows
            rows.copy_(tensor)
        del tensors
    load_weights(model, weights, source=str(folder))
    return model.eval()


# --- writing -------------------------------------------------------------------------------------

def hf_tensors(model: GPT) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, conv) for every tensor of the matching transformers model (see hf_archs): its
    name there, the tensor in our nn.Linear layout (out, in) on the CPU, and whether transformers
    stores it transposed (GPT-2's Conv1D); a bias our model does not have comes as zeros. A
    Classifier's head is the *ForSequenceClassification's score.weight, in place of the LM head."""
    ours = model.state_dict()
    family = hf_family(model.config)
    prefix = "transformer." if family == "gpt2" else ""
    classifier = isinstance(model, Classifier)
    if classifier:
        yield "score.weight", ours["score.weight"].detach().cpu(), False
    for name, (parts, conv) in tensor_map(model.config, family).items():
        if classifier and name == "lm_head.weight":
            continue
        if name in ours:
            tensor = ours[name].detach().cpu()
        else:  # no bias: a zero bias is exactly equivalent
            tensor = torch.zeros(ours[name.removesuffix("bias") + "weight"].shape[0], dtype=model.tok_emb.weight.dtype)
        for hf_name, part in zip(parts, tensor.chunk(len(parts))):
            yield (hf_name if hf_name.startswith("lm_head") else prefix + hf_name), part, conv


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under the names and layouts of the matching transformers model, as contiguous
    CPU tensors."""
    # Linear (out, in) -> Conv1D (in, out)
    return {key: (part.t() if conv else part).contiguous() for key, part, conv in hf_tensors(model)}


def _write_tokenizer(folder: Path, tokenizer: Tokenizer, context_length: int, pad: bool = False) -> None:
    """The tokenizer's files for transformers' AutoTokenizer: for GPT-2's, our bundled BPE files
    under the names GPT2Tokenizer expects (any further special tokens listed, so they get the
    same ids); for our own, its tokenizer.json for PreTrainedTokenizerFast. A chat model's also
    carry the chat template (CHAT_TEMPLATE_JINJA, for apply_chat_template) and a
    generation_config.json whose end tokens include <|im_end|>. `pad`: <|endoftext|> pads too (a
    classifier's pad id, which tokenizer(..., padding=True) then uses)."""
    special: dict = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    if pad:
        special["pad_token"] = EOT_TOKEN
    if tokenizer.kind == "gpt2":
        shutil.copyfile(asset_path("encoder.json"), folder / "vocab.json")
        shutil.copyfile(asset_path("vocab.bpe"), folder / "merges.txt")
        tokenizer_class = "GPT2Tokenizer"
    else:
        (folder / "tokenizer.json").write_bytes(tokenizer.json_bytes)
        tokenizer_class = "PreTrainedTokenizerFast"
    extra = [t for t in tokenizer.special_tokens if t != EOT_TOKEN]
    if extra:
        special["additional_special_tokens"] = extra
    tokenizer_config = {
        "tokenizer_class": tokenizer_class,
        "model_max_length": context_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        # Decoding must give back the text exactly, as tiktoken does (no " ." -> "." cleanup).
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if has_chat_template(tokenizer):  # the same template as ours, and generation ends each answer
        tokenizer_config["chat_template"] = CHAT_TEMPLATE_JINJA
        generation = {"bos_token_id": tokenizer.eot_id, "eos_token_id": [end_of_turn(tokenizer), tokenizer.eot_id]}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def export_hf(model: GPT, out: str | Path, overwrite: bool = False) -> Path:
    """Write `model` as a Hugging Face folder of the matching architecture (config.json,
    model.safetensors and, when the model's vocabulary holds its tokenizer's, the tokenizer
    files), atomically. A model no transformers architecture computes is refused
    (weights.hf_archs.hf_family)."""
    out = Path(out)
    hf_family(model.config)  # refuse before touching anything
    check_output_folder(out, overwrite)
    with atomic_folder(out) as tmp:
        # transformers refuses a safetensors file without this metadata
        save_file(hf_state_dict(model), tmp / SAFETENSORS, metadata={"format": "pt"})
        dtype, tokenizer = model.tok_emb.weight.dtype, tokenizer_of(model)
        config = hf_config(model.config, dtype, tokenizer)
        if isinstance(model, Classifier):
            config.update(classifier_config(model.config, model.classes, model.pad_id))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if model.config.vocab_size >= tokenizer.vocab_size:
            _write_tokenizer(tmp, tokenizer, model.config.context_length, pad=isinstance(model, Classifier))
    return out
