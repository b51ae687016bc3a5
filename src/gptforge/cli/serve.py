"""`gptforge serve`: Serve a model over HTTP: an OpenAI-compatible API (/v1/completions,
/v1/chat/completions with streaming, /v1/embeddings, /v1/models, /health) and a web chat page at /. Concurrent
requests are decoded together (continuous batching). Listens on 127.0.0.1 unless --host says
otherwise; Ctrl-C or SIGTERM stops it. With --index DIR, each chat request's last user message
retrieves its best passages into the prompt, and the response lists them in "sources"."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DTYPES
from .common import add_device, add_index_flags, add_model_source, add_quantize, model_from_args, retriever_from_args

NAME = "serve"
HELP = "serve a model: OpenAI-compatible API and a web chat page"
API_KEY_VARIABLE = "GPTFORGE_API_KEY"


def add_arguments(p) -> None:
    add_model_source(p, "seed for --random-init weights (default: random)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to "
                        "the network: set an API key)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1 requests (default: ${API_KEY_VARIABLE} "
                        "if set, else no key)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model's name in the API (default: the checkpoint folder's or preset's name)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="sequences decoded together, each in a row of the KV cache (default: 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences that may wait for a free row; more get 503 (default: 64)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="precision of the weights (default: float32)")
    add_index_flags(p)
    add_device(p)
    add_quantize(p)


def run(args) -> int:
    from ..checks import require_int
    from ..errors import UserError

    require_int("--max-batch", args.max_batch)
    require_int("--max-queue", args.max_queue)
    require_int("--port", args.port, minimum=0)
    if args.port > 65535:
        raise UserError(f"--port must be at most 65535, got {args.port}")
    try:
        from ..serve.app import serve
    except ImportError as e:
        raise UserError(f"gptforge serve needs the serve extra ({e.name} is missing): "
                        "pip install 'gptforge[serve]'") from None
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE)
    if api_key is not None and not api_key.strip():  # `--api-key "$UNSET"` must not run open
        source = "--api-key" if args.api_key is not None else f"${API_KEY_VARIABLE}"
        raise UserError(f"{source} is empty: give a key, or leave it out to serve without one")
    model = model_from_args(args, args.dtype)
    name = args.model_name or (Path(args.checkpoint).resolve().name if args.checkpoint else args.preset)
    retrieve = retriever_from_args(args, model)
    serve(model, name, args.host, args.port, api_key, args.max_batch, args.max_queue, retrieve)
    return 0
