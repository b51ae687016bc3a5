"""`gptforge chat`: Talk to a model in the terminal. A chat model (one with a chat template) answers
through its template, with the conversation so far; a base model continues each line as plain
text. Commands: /reset, /system TEXT, /exit. Ctrl-C stops an answer. --tools / --tools-module give a
model fine-tuned on tool use functions to call, run here. --index DIR retrieves each message's best
passages from an index of your documents into the prompt and lists their sources after the answer;
with --tools search_documents the model searches it by a call instead."""

from __future__ import annotations

from ..config import DTYPES
from .common import (
    add_device,
    add_index_flags,
    add_model_source,
    add_quantize,
    add_sampling_flags,
    model_from_args,
    retriever_from_args,
    sampling_from_args,
)

NAME = "chat"
HELP = "talk to a model in the terminal"


def add_arguments(p) -> None:
    add_model_source(p, "seed for sampling (each answer uses the next one) and --random-init weights "
                        "(default: random)")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt (chat models)")
    p.add_argument("--tools", default=None, metavar="NAMES",
                   help="built-in tools the model may call, comma-separated: calculator, clock, search_documents "
                        "(with --index: the index's passages as its result, instead of in every prompt) (a chat "
                        "model fine-tuned on tool use; each call is shown, run here, and its result fed back)")
    p.add_argument("--tools-module", default=None, metavar="FILE.py",
                   help="your own tools: every public function of this Python file, its schema from its type "
                        "hints and docstring (your code, run on your machine)")
    add_index_flags(p)
    add_sampling_flags(p, max_new_tokens=256, temperature=0.7, top_k=50)
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="precision of the weights (default: float32)")
    add_device(p)
    add_quantize(p)


def run(args) -> int:
    from ..chat import ChatSettings, chat_in_terminal
    from ..errors import UserError
    from ..retrieval.tool import NAME as SEARCH
    from ..retrieval.tool import search_tool
    from ..tools.registry import builtin_tools, module_tools

    sampling = sampling_from_args(args)  # bad flags fail before the model loads
    names = [n.strip() for n in (args.tools or "").split(",")]
    if SEARCH in names and not args.index:
        raise UserError(f"--tools {SEARCH} searches an index: give it with --index DIR")
    tools = builtin_tools(",".join(n for n in names if n != SEARCH))
    tools += module_tools(args.tools_module) if args.tools_module else []
    model = model_from_args(args, args.dtype)
    retrieve = retriever_from_args(args, model)
    if SEARCH in names:  # the model asks the index when it wants to, rather than every turn
        tools, retrieve = [search_tool(retrieve), *tools], None
    chat_in_terminal(model, ChatSettings(sampling, args.system, tools, retrieve=retrieve))
    return 0
