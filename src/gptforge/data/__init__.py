"""Text to training batches: sources -> split -> tokens -> corpus folders -> windows and batches.

    sources.py    what an INPUT names (files, folders, globs, builtin:, gutenberg:, URLs, hf:,
                  jsonl/parquet), read as a stream of documents (download.py, gutenberg.py)
    split.py      which text trains and which validates
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
from .sources import SourceOptions, read_documents

__all__ = ["BatchLoader", "Corpus", "ShardedTokens", "SourceOptions", "TokenWindows", "as_token_array",
           "corpus_tokenizer", "is_corpus", "load_corpus", "load_splits", "prefetch", "prepare_corpus",
           "read_documents", "tokenize"]
