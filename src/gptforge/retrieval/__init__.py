"""Retrieval: your documents as an index of chunks that a query finds (`gptforge index`).

    readers.py   what a PATH names; .txt, .md, .html, .jsonl, .pdf read as text, mapped back to lines
    chunking.py  a text as chunks: by headings and paragraphs, then token windows with overlap
    index.py     the SQLite database: documents, chunks, FTS5, settings; incremental, transactional add
    search.py    BM25 search of the chunks (FTS5), the vector scan, and both fused (reciprocal rank)
    embed.py     embedders: our model's mean-pooled states, an OpenAI-compatible URL, sentence-transformers
    passages.py  hits as the passages a chat prompt carries, and the retriever ask/chat/serve use
    ask.py       one question answered from an index (`gptforge ask`)
    tool.py      search_documents, the tool a tool-calling model searches an index with
    evaluation.py  recall@k and MRR of an index; exact match and F1 of answers with and without it
"""

from .chunking import Chunk, ChunkSettings, chunk_text
from .index import AddReport, add_paths, index_stats, list_documents
from .readers import Document, Unreadable, read_document
from .search import Hit, search

__all__ = ["AddReport", "Chunk", "ChunkSettings", "Document", "Hit", "Unreadable", "add_paths", "chunk_text",
           "index_stats", "list_documents", "read_document", "search"]
