"""Training a byte-level BPE on your own corpus: `gptforge tokenizer train`.

Hugging Face `tokenizers` learns the merges (in Rust, on every core); gptforge feeds it the
documents of any INPUTs `prepare` takes, streamed in pieces cut where the pre-tokenisation would
split anyway, so memory holds the counts of distinct pre-tokens, not the corpus. The vocabulary
starts from the 256 bytes (every text is encodable) and the special tokens, <|endoftext|> and the
chat template's, which get the first ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from importlib import metadata
from itertools import groupby
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_folder, check_output_folder
from .base import CHAT_TOKENS, EOT_TOKEN
from .bpe import PATTERN, BPETokenizer

SPECIAL_TOKENS = (EOT_TOKEN, *CHAT_TOKENS)
# The Rust trainer reserves about 66 bytes per requested id before merging (2^32 ids asked it for
# 283 GB and aborted the process), and a model's embedding grows with the ids: 2^24 (1.1 GB there,
# 51 GB of float32 embedding at 768 dims) is far beyond any vocabulary a corpus yields in practice.
MAX_VOCAB = 1 << 24
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
                        f"and at most 2^24 = {MAX_VOCAB:,} (the trainer reserves memory for every id up front), "
                        f"got {vocab_size!r}")


def learn(documents: Iterable[Iterable[str]], vocab_size: int, progress: bool = True,
          total: int | None = None) -> BPETokenizer:
    """A byte-level BPE of `vocab_size` ids (special tokens included) learned from documents, each
    given as text blocks; its meta records the settings. Refuses text-less input."""
    from ..text.pieces import cut_pieces

    check_vocab_size(vocab_size)
    hf = empty_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, show_progress=progress,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chars = 0

    def pieces(bar: tqdm) -> Iterator[str]:
        nonlocal chars
        for blocks in documents:  # cut where the pattern splits anyway: the counts stay exact
            for piece in cut_pieces(blocks, PIECE_CHARS, BPETokenizer.safe_cut):
                chars += len(piece)
                bar.update(len(piece))
                yield piece

    with tqdm(total=total, unit="char", unit_scale=True, desc="reading", disable=not progress) as bar:
        hf.train_from_iterator(pieces(bar), trainer)
    if chars == 0:
        raise UserError("the corpus is empty: the inputs contain no text")
    training = {"vocab_size": vocab_size, "min_frequency": MIN_FREQUENCY, "pattern": PATTERN, "characters": chars,
                "tokenizers_version": metadata.version("tokenizers")}
    return BPETokenizer(hf.to_str(pretty=True).encode(), {"training": training})


def train_tokenizer(inputs: list[str] | str, out: str | os.PathLike, vocab_size: int, options=None,
                    overwrite: bool = False, progress: bool = True) -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` ids (special tokens included) on INPUTs (see
    gptforge.text.sources) and write its folder `out` (tokenizer.json + meta.json) atomically.
    The same inputs and settings give a byte-identical tokenizer.json."""
    from ..text.sources import open_sources, warn_replaced

    check_vocab_size(vocab_size)
    out = Path(out)
    check_output_folder(out, overwrite)
    sources = open_sources(inputs, options)
    sizes = [s.size for s in sources]
    documents = (document.blocks for source in sources for document in source.documents())
    tokenizer = learn(documents, vocab_size, progress, None if None in sizes else sum(sizes))
    warn_replaced(sources)
    tokenizer.meta["sources"] = [s.record for s in sources]
    with atomic_folder(out) as tmp:
        tokenizer.save(tmp)
    return tokenizer


def train_on_train_split(data: str, val_fraction: float, vocab_size: int, progress: bool = True) -> BPETokenizer:
    """A byte-level BPE learned from the text a run trains on (`train --tokenizer bpe:N`): the
    train split of text --data, split by characters as training splits it, so the validation
    text stays unseen."""
    from ..text.split import open_split, tag_blocks

    check_vocab_size(vocab_size)
    sources, split, n_docs = open_split([data], val_fraction, "chars")
    train_blocks = (t for t in tag_blocks(sources, split, val_fraction, 0, n_docs) if t[1] == 0)
    documents = ((block for _, _, block in group) for _, group in groupby(train_blocks, key=lambda t: t[0]))
    tokenizer = learn(documents, vocab_size, progress)
    tokenizer.meta["sources"] = [s.record for s in sources]
    tokenizer.meta["training"]["text"] = f"the train split of {data} (val_fraction {val_fraction}, by characters)"
    return tokenizer
