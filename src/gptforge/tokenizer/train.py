"""Training a byte-level BPE on your own corpus: `gptforge tokenizer train`.

Hugging Face `tokenizers` learns the merges (in Rust, on every core); gptforge feeds it the
documents of any INPUTs `prepare` takes, streamed in pieces cut where the pre-tokenisation would
split anyway, so memory holds the counts of distinct pre-tokens, not the corpus. The vocabulary
starts from the 256 bytes (every text is encodable) and the special tokens, <|endoftext|> and the
chat template's, which get the first ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_folder, check_output_folder
from .base import CHAT_TOKENS, EOT_TOKEN
from .bpe import PATTERN, BPETokenizer

SPECIAL_TOKENS = (EOT_TOKEN, *CHAT_TOKENS)
MAX_VOCAB = 1 << 32  # ids are stored as uint32 at most
PIECE_CHARS = 1 << 20  # text reaches the trainer in pieces of about this many characters
MIN_FREQUENCY = 2  # a pair seen once is noise, not a merge worth an id


def empty_tokenizer() -> HFTokenizer:
    """An untrained byte-level BPE: the GPT-4-style split (PATTERN), then bytes as printable
    characters (the pattern did the splitting, so ByteLevel's own regex is off)."""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def check_vocab_size(vocab_size: int) -> None:
    low = 256 + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not low <= vocab_size <= MAX_VOCAB:
        raise UserError(f"vocab size must be between {low} (256 bytes + {len(SPECIAL_TOKENS)} special tokens) "
                        f"and 2^32 = {MAX_VOCAB:,}, got {vocab_size!r}")


def _pieces(sources, safe_cut, bar: tqdm, chars: list[int]) -> Iterator[str]:
    """Every document of every source, cut into pieces at points where the pattern splits anyway."""
    from ..data.encode import cut_pieces

    for source in sources:
        for document in source.documents():
            for piece in cut_pieces(document.blocks, PIECE_CHARS, safe_cut):
                chars[0] += len(piece)
                bar.update(len(piece))
                yield piece


def train_tokenizer(inputs: list[str] | str, out: str | os.PathLike, vocab_size: int, options=None,
                    overwrite: bool = False, progress: bool = True) -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` ids (special tokens included) on INPUTs (see
    gptforge.data.sources) and write its folder `out` (tokenizer.json + meta.json) atomically.
    The same inputs and settings give a byte-identical tokenizer.json."""
    from ..data.sources import open_sources, warn_replaced

    check_vocab_size(vocab_size)
    out = Path(out)
    check_output_folder(out, overwrite)
    sources = open_sources(inputs, options)
    hf = empty_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, show_progress=progress,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    sizes = [s.size for s in sources]
    chars = [0]
    with tqdm(total=None if None in sizes else sum(sizes), unit="char", unit_scale=True, desc="reading",
              disable=not progress) as bar:
        hf.train_from_iterator(_pieces(sources, BPETokenizer.safe_cut, bar, chars), trainer)
    if chars[0] == 0:
        raise UserError("the corpus is empty: the inputs contain no text")
    warn_replaced(sources)
    meta = {"sources": [s.record for s in sources],
            "training": {"vocab_size": vocab_size, "min_frequency": MIN_FREQUENCY, "pattern": PATTERN,
                         "characters": chars[0], "tokenizers_version": metadata.version("tokenizers")}}
    tokenizer = BPETokenizer(hf.to_str(pretty=True).encode(), meta)
    with atomic_folder(out) as tmp:
        tokenizer.save(tmp)
    return tokenizer
