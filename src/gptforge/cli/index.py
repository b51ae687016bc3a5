"""`gptforge index`: An index of your documents (.txt, .md, .html, .jsonl, .pdf with the `pdf`
extra) in one SQLite file, DIR/index.sqlite: each document split by headings and paragraphs into
chunks of about --chunk-tokens tokens, searched by BM25 (SQLite FTS5). `add` is incremental (a
changed file is re-indexed, one gone from a folder dropped, the rest skipped) and all or nothing:
an interrupted add leaves the index as it was."""

from __future__ import annotations

from ..errors import UserError

NAME = "index"
HELP = "index your documents (txt, md, html, jsonl, pdf) and search them (BM25)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(title="actions", metavar="ACTION", parser_class=type(p))
    add = sub.add_parser("add", help="add files and folders to an index (made if missing)",
                         description="Index the files PATHs name (a folder: its .txt, .md, .html, .jsonl and "
                                     ".pdf files, at any depth) into the index at DIR. Unreadable or binary "
                                     "files are skipped, one line each. Naming a folder again re-indexes its "
                                     "changed files and drops the ones gone from it.")
    add.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to index")
    add.add_argument("--index", required=True, metavar="DIR", help="the index folder")
    add.add_argument("--chunk-tokens", type=int, metavar="N",
                     help="tokens per chunk, when the index is new (default: 256)")
    add.add_argument("--overlap", type=int, metavar="N",
                     help="tokens shared by the windows of a paragraph longer than a chunk (default: 32)")
    add.add_argument("--tokenizer", metavar="NAME_OR_DIR",
                     help="what counts the tokens: gpt2, or a tokenizer, corpus, run or checkpoint folder "
                          "holding one (default: gpt2; an existing index keeps its own)")
    add.add_argument("--text-field", default="text", metavar="NAME",
                     help="the field holding the text in .jsonl records (default: text)")
    add.add_argument("--embedder", metavar="SPEC",
                     help="also store a vector per chunk, for hybrid search: a model (checkpoint, run or Hugging "
                          "Face folder: its mean-pooled hidden states), an OpenAI-compatible URL "
                          "(http://HOST/v1, key in $GPTFORGE_EMBEDDER_KEY), or st:FOLDER (a local "
                          "sentence-transformers model); fixed when first given, later adds use it")
    add.add_argument("--embedder-model", metavar="NAME",
                     help="with a URL embedder: the model to ask for (default: the first it lists)")
    add.add_argument("--no-progress", action="store_true", help="no progress bar")
    add.set_defaults(action=_add)

    search = sub.add_parser("search", help="the chunks that match a query best",
                            description="Print the K chunks that match QUERY best (BM25, higher is better): "
                                        "rank, score, file:lines (a PDF: pages) and the chunk's first lines.")
    search.add_argument("folder", metavar="DIR", help="the index folder")
    search.add_argument("query", metavar="QUERY", help="words to look for")
    search.add_argument("-k", type=int, default=5, metavar="N", help="how many chunks (default: 5)")
    search.add_argument("--lines", type=int, default=3, metavar="N",
                        help="lines of each chunk to show (default: 3)")
    search.add_argument("--mode", choices=("hybrid", "bm25", "vector"), default="hybrid",
                        help="hybrid: BM25 and the vectors fused by reciprocal rank, when the index has vectors "
                             "(else BM25); bm25; vector (default: hybrid)")
    search.set_defaults(action=_search)

    listing = sub.add_parser("list", help="the documents in an index", description="One line per document: "
                             "its chunks, tokens, size, the start of its sha256, and its path.")
    listing.add_argument("folder", metavar="DIR", help="the index folder")
    listing.set_defaults(action=_list)

    stats = sub.add_parser("stats", help="what an index holds, and its settings",
                           description="Documents, chunks, tokens, bytes indexed, the index's size on disk, "
                                       "and the settings it was built with.")
    stats.add_argument("folder", metavar="DIR", help="the index folder")
    stats.set_defaults(action=_stats)


def run(args) -> int:
    if not hasattr(args, "action"):
        raise UserError("name an action: gptforge index add|search|list|stats (see --help)")
    return args.action(args)


def _shown(path: str) -> str:
    from ..retrieval.passages import shown_path

    return shown_path(path)


def _add(args) -> int:
    from ..retrieval import add_paths
    from ..retrieval.embed import load_embedder

    if args.embedder_model and not args.embedder:
        raise UserError("--embedder-model goes with --embedder URL")
    embedder = load_embedder(args.embedder, args.embedder_model) if args.embedder else None
    report = add_paths(args.index, args.paths, chunk_tokens=args.chunk_tokens, overlap=args.overlap,
                       tokenizer=args.tokenizer, text_field=args.text_field, progress=not args.no_progress,
                       embedder=embedder)
    vectors = f", {report.vectors:,} embedded" if report.vectors else ""
    print(f"{args.index}: {report.added} added, {report.updated} updated, {report.removed} removed, "
          f"{report.unchanged} unchanged, {len(report.skipped)} skipped; {report.chunks:,} chunks written{vectors}")
    return 0


def _search(args) -> int:
    from ..retrieval import search
    from ..retrieval.passages import index_embedder

    embedder = index_embedder(args.folder) if args.mode != "bm25" else None
    hits = search(args.folder, args.query, args.k, embedder, args.mode)
    if not hits:
        print("no chunk matches")
    for hit in hits:
        print(f"{hit.rank:>3}  {hit.score:8.3f}  {_shown(hit.path)}:{hit.where.rsplit(':', 1)[1]}")
        lines = [line.strip() for line in hit.text.strip().splitlines() if line.strip()]
        for line in lines[:args.lines]:
            print(f"       {line[:100]}")
    return 0


def _list(args) -> int:
    from ..retrieval import list_documents

    rows = list_documents(args.folder)
    print(f"{'chunks':>7} {'tokens':>10} {'bytes':>12}  {'sha256':<12}  path")
    for row in rows:
        print(f"{row.chunks:>7,} {row.tokens:>10,} {row.size:>12,}  {row.sha256[:12]}  {_shown(row.path)}")
    print(f"{len(rows):,} documents")
    return 0


def _stats(args) -> int:
    from ..retrieval import index_stats

    s = index_stats(args.folder)
    print(f"documents     {s['documents']:,} ({s['bytes']:,} bytes)")
    print(f"chunks        {s['chunks']:,} ({s['tokens']:,} tokens)")
    print(f"index size    {s['index_bytes']:,} bytes")
    print(f"chunk tokens  {s['chunk_tokens']} (overlap {s['overlap']})")
    print(f"tokenizer     {s['tokenizer']}")
    from ..retrieval.embed import describe

    embedder = f"{describe(s['embedder'])} ({s['vectors']:,} vectors)" if s["embedder"] else "none (BM25 only)"
    print(f"embedder      {embedder}")
    return 0
