"""What constrained decoding (tools/structured.py, llguidance) costs per token, and what it buys.

Cost: the serving engine decodes R rows of T tokens each, free and with every row keeping to a
tool-call grammar (calls to two tools, string arguments unbounded so no row ends early), the two
alternating three times; prints the engine's microseconds per token of each, their difference, and
the constraint's own work per token (computing the mask, applying it, advancing) timed alone. All
times are this thread's CPU time (time.thread_time, the engine stepped in it, one torch thread):
a machine shared with other work slows the wall clock, not these.

Benefit: N replies sampled at temperature 1 from the same prompt with tool_choice "required",
constrained and free, and how many hold calls that parse (tools/calls.py) and whose arguments
validate against their tool's schema (the test suite's own checker, tests/helpers.schema_errors).

    python benchmarks/constrained.py                                          # random gpt2-tiny, GPT-2's vocabulary
    python benchmarks/constrained.py --checkpoint runs/mine  # a trained base (a speedrun-cpu run) (tool tokens added)
    python benchmarks/constrained.py --checkpoint runs/tools --builtin-tools   # the tools-cpu demo, its own tools
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from gptforge.config import GPTConfig
from gptforge.data.instructions import read_file
from gptforge.generate import model_for_generation
from gptforge.model import GPT, prepare_for_decoding
from gptforge.model.vocab import grow_vocabulary
from gptforge.sampling import Sampling
from gptforge.serve.engine import Engine, Sequence
from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS, gpt2, tokenizer_of
from gptforge.tokenizer.chat import render
from gptforge.tools.calls import parse_reply
from gptforge.tools.registry import builtin_tools
from gptforge.tools.structured import Constraint, compile_grammar, grammar_text

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from tools_demo import TEST_SPLIT, category  # benchmarks/, beside this script

from helpers import schema_errors

TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": -999, "maximum": 999},
                                         "b": {"type": "integer", "minimum": -999, "maximum": 999}},
        "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"word": {"type": "string", "maxLength": 12},
                                         "lang": {"enum": ["en", "fr"]}},
        "required": ["word"], "additionalProperties": False}}},
]
LONG = [{"type": "function", "function": {"name": "note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}]


def tool_model(checkpoint: str | None):
    """The model with the chat and tool tokens (rows added at the end when its tokenizer lacks them)."""
    if checkpoint is None:  # context 512: room for the tools' block
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset("gpt2-tiny", context_length=512), gpt2())
    else:
        model = model_for_generation(checkpoint)
    tokenizer = tokenizer_of(model).with_special_tokens(CHAT_TOKENS + TOOL_TOKENS)
    model = grow_vocabulary(model, max(tokenizer.vocab_size, model.config.vocab_size), tokenizer)
    return prepare_for_decoding(model.eval())


def decode(model, prompts, tokens, constraints, stops=frozenset(), temperature=1.0, seed=0):
    """Each row's tokens and the CPU seconds the engine took to decode them (the prefill left out)."""
    outs = [[] for _ in prompts]
    engine = Engine(model, max_batch=len(prompts), max_queue=len(prompts))
    engine.submit([Sequence(p, Sampling(max_new_tokens=tokens, temperature=temperature, seed=seed + i, stop_ids=stops),
                            lambda t, r, out=out: t is not None and out.append(t), c)
                   for i, (p, out, c) in enumerate(zip(prompts, outs, constraints))])
    with torch.inference_mode():
        while engine.waiting or engine.staging:  # prefill every row (and their first tokens)
            engine.step()
        start = time.thread_time()
        while engine.rows:
            engine.step()
    return outs, time.thread_time() - start


class Timed(Constraint):
    """A Constraint that adds up the CPU seconds of its own work."""

    seconds = 0.0
    tokens = 0

    def mask(self, logits):
        start = time.thread_time()
        out = super().mask(logits)
        Timed.seconds += time.thread_time() - start
        return out

    def accept(self, token):
        start = time.thread_time()
        super().accept(token)
        Timed.seconds += time.thread_time() - start
        Timed.tokens += 1


def cost(model, prompt, rows, tokens):
    tokenizer = tokenizer_of(model)
    grammar = compile_grammar(tokenizer, grammar_text(tokenizer, LONG, "required"), model.config.vocab_size)
    timings = {"free": [], "constrained": []}
    for _ in range(3):
        _, free = decode(model, [prompt] * rows, tokens, [None] * rows)
        Timed.seconds, Timed.tokens = 0.0, 0
        constraints = [Timed(grammar.matcher.deep_copy(), grammar.vocab_size, frozenset()) for _ in range(rows)]
        _, constrained = decode(model, [prompt] * rows, tokens, constraints)
        timings["free"].append(free / (rows * (tokens - 1)))
        timings["constrained"].append(constrained / (rows * (tokens - 1)))
    free, constrained = (min(v) * 1e6 for v in timings.values())
    own = Timed.seconds / max(Timed.tokens, 1) * 1e6
    print(f"  {rows} row(s) x {tokens} tokens: free {free:.0f} us/token, constrained {constrained:.0f} us/token "
          f"(+{constrained - free:.0f}); the constraint's own work {own:.0f} us/token")


def validity(model, prompts, tools, samples, tokens):
    """Of `samples` replies (the prompts in turn), how many hold calls that parse and validate."""
    tokenizer = tokenizer_of(model)
    stops = frozenset({tokenizer.eot_id, tokenizer.special_tokens["<|im_end|>"]})
    grammar = compile_grammar(tokenizer, grammar_text(tokenizer, tools, "required", parallel=False),
                              model.config.vocab_size)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    rows = [prompts[i % len(prompts)] for i in range(samples)]
    for name, constraints in (("constrained", [grammar.constraint(stops) for _ in range(samples)]),
                              ("unconstrained", [None] * samples)):
        outs, _ = decode(model, rows, tokens, constraints, stops)
        valid = 0
        for out in outs:
            calls = parse_reply(tokenizer.decode(out)).calls
            valid += bool(calls) and all(c.name in schemas and not schema_errors(c.arguments, schemas[c.name])
                                         for c in calls)
        print(f"  {name}: {valid}/{samples} replies hold calls that parse and validate ({100 * valid / samples:.0f}%)")


def demo_questions(tokenizer, tools, n):
    """The prompts of builtin:tools' first n test questions that need a tool, under the chat's tools."""
    questions = [e.messages[:1] for e in read_file(TEST_SPLIT) if category(e.messages) != "no tool"][:n]
    return [render(q, tokenizer, add_generation_prompt=True, tools=tools)[0] for q in questions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--builtin-tools", action="store_true",
                   help="validity with the chat's calculator and clock and builtin:tools' test questions "
                        "(for a model fine-tuned on them: the tools-cpu demo)")
    args = p.parse_args()
    model = tool_model(args.checkpoint)
    tokenizer = tokenizer_of(model)
    question = [{"role": "user", "content": "What is 12 + 30?"}]
    with_tools = render(question, tokenizer, add_generation_prompt=True, tools=TOOLS)[0]
    # a model whose context cannot hold the tools' block gets the question alone (the grammar needs no prompt)
    prompt = with_tools if len(with_tools) + args.tokens <= model.config.context_length else \
        render(question, tokenizer, add_generation_prompt=True)[0]
    print(f"{args.checkpoint or 'random gpt2-tiny'}: vocabulary {tokenizer.vocab_size}, prompt {len(prompt)} tokens"
          f"{'' if prompt is with_tools else ' (without the tools block: the context is too short)'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    tokens = min(args.tokens, model.config.context_length - len(prompt))
    print("cost per token (best of 3, alternating):")
    for rows in (1, 8):
        cost(model, prompt, rows, tokens)
    if args.builtin_tools:
        tools = [tool.schema for tool in builtin_tools("calculator,clock")]
        prompts = demo_questions(tokenizer, tools, args.samples)
        tokens = min(args.tokens, model.config.context_length - max(map(len, prompts)))
        print(f"valid calls, the built-in tools, {len(prompts)} test questions of builtin:tools, "
              f"tool_choice 'required', temperature 1:")
    else:
        tools, prompts = TOOLS, [prompt]
        print(f"valid calls, tool_choice 'required', temperature 1, {args.samples} samples:")
    validity(model, prompts, tools, args.samples, tokens)
    print(json.dumps({"date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
