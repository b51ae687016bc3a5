"""The model: GPT (gpt.py: GPT-2's block or a modern one built from layers.py), its key/value cache,
and the CPU decoding fast path (cpu_decoding.py)."""

from .cpu_decoding import pack_for_batches, prepare_for_decoding
from .gpt import GPT, KVCache, vocab_rows

__all__ = ["GPT", "KVCache", "pack_for_batches", "prepare_for_decoding", "vocab_rows"]
