"""The model: GPT-2 (gpt.py), its key/value cache, and the CPU decoding fast path (cpu_decoding.py)."""

from .cpu_decoding import prepare_for_decoding
from .gpt import GPT, KVCache, vocab_rows

__all__ = ["GPT", "KVCache", "prepare_for_decoding", "vocab_rows"]
