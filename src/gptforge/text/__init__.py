"""Text, before any tokenizer: what an INPUT names read as documents, the train/val split, and
pieces cut where tokenizing stays exact. Both the tokenizer (training one) and data (tokenizing a
corpus) read text through here.

    sources.py    what an INPUT names (files, folders, globs, builtin:, gutenberg:, URLs, hf:,
                  jsonl/parquet), read as a stream of documents (download.py, gutenberg.py)
    split.py      which text trains and which validates
    pieces.py     text re-cut into bounded pieces at a tokenizer's safe points
"""

from .pieces import cut_pieces
from .sources import SourceOptions, open_sources, read_documents

__all__ = ["SourceOptions", "cut_pieces", "open_sources", "read_documents"]
