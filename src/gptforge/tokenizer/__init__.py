"""Tokenizers: text <-> token ids, GPT-2's or one trained on your own corpus.

    base.py      the Tokenizer interface every part of gptforge uses; CHAT_TOKENS, TOOL_TOKENS
    gpt2_bpe.py  GPT-2's BPE through tiktoken, from files bundled in the package
    bpe.py       a byte-level BPE of your own (Hugging Face `tokenizers`): its folder, checked on load
    train.py     training one on your corpus (`gptforge tokenizer train`)
    resolve.py   which tokenizer: by name or folder, from a checkpoint's record, or a model's own
"""

from .base import CHAT_TOKENS, EOT_TOKEN, TOOL_TOKENS, Tokenizer
from .bpe import BPETokenizer
from .gpt2_bpe import gpt2
from .resolve import TOKENIZER_DIR, ids_to_text, load_tokenizer, text_to_ids, tokenizer_from_record, tokenizer_of

__all__ = ["BPETokenizer", "CHAT_TOKENS", "EOT_TOKEN", "TOKENIZER_DIR", "TOOL_TOKENS", "Tokenizer", "gpt2", "ids_to_text",
           "load_tokenizer", "text_to_ids", "tokenizer_from_record", "tokenizer_of"]
