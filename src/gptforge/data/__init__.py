"""Text to training batches: documents (gptforge.text) -> tokens -> corpus folders -> windows and batches.

    encode.py     text to tokens, in order, on every core
    shards.py     token shard files, written in order and read as one memory-mapped stream
    prepare.py    INPUTs -> a corpus folder (shards + meta.json), resumable
    corpus.py     opening a corpus folder (checked), or text tokenized in memory
    batches.py    windows over tokens, reproducible resumable batches, prefetching
"""

from .batches import BatchLoader, TokenWindows, as_token_array, prefetch
from .corpus import Corpus, corpus_tokenizer, is_corpus, load_corpus, load_splits
from .encode import tokenize
from .prepare import prepare_corpus
from .shards import ShardedTokens

__all__ = ["BatchLoader", "Corpus", "ShardedTokens", "TokenWindows", "as_token_array", "corpus_tokenizer",
           "is_corpus", "load_corpus", "load_splits", "prefetch", "prepare_corpus", "tokenize"]
