"""Weights in and out: our checkpoints (checkpoint.py), the Hugging Face format (hf.py; GPT-2, Llama
and Qwen3 as hf_archs.py maps them), and `load_any` (load.py), which takes any of them by path."""

from .checkpoint import load_checkpoint, save_checkpoint
from .hf import export_hf, load_hf_model
from .load import load_any, resolve_model_path

__all__ = ["export_hf", "load_any", "load_checkpoint", "load_hf_model", "resolve_model_path", "save_checkpoint"]
