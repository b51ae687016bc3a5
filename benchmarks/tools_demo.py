"""The tool-calling demo measured: a model fine-tuned on `builtin:tools` (the `tools-cpu` recipe)
answers the held-out test split with its tools run, and again without them.

    python benchmarks/tools_demo.py --checkpoint runs/tools             # the 150 test records
    python benchmarks/tools_demo.py --checkpoint runs/tools --limit 30 --json

With tools: each question goes through the terminal chat's own loop (chat.answer_with_tools, the
built-in calculator and clock, greedy decoding): the model calls, the call runs, its result comes
back as a tool turn, the model answers. A final answer counts when it is exactly the record's.
Without tools: the same prompt (the tools still declared, as in training), but nothing runs; the
model's answer is started for it with the reference's words up to the first tool result (e.g.
`48213 * 7719 = `), so it must write the number itself, and it counts when the rest is exactly the
record's; beside them, how often its calls named the right tools and were exactly the record's
(the same arguments). Questions that need no tool are asked once (their answer is the same either way): they
count when the model answers directly, without a call, and exactly.

Categories as scripts/make_tools.py draws them: arithmetic (one calculator call on integers), dates
(one clock call), conversion (a calculator call with a factor), parallel (two calls), no tool.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import defaultdict
from pathlib import Path

from gptforge.chat import ChatSettings, Conversation, CtrlC, answer_with_tools, chat_prompt, stop_ids
from gptforge.data.instructions import read_file
from gptforge.generate import stream_text
from gptforge.sampling import Sampling
from gptforge.tokenizer import tokenizer_of
from gptforge.tools.registry import builtin_tools, check_unique
from gptforge.weights.load import load_any

TEST_SPLIT = Path(__file__).resolve().parent.parent / "src" / "gptforge" / "corpora" / "tools" / "test.jsonl"
CATEGORIES = ("arithmetic", "dates", "conversion", "parallel", "no tool")


def category(messages: list[dict]) -> str:
    """Which kind of make_tools question a conversation is, from its calls."""
    calls = next((m["tool_calls"] for m in messages if m.get("tool_calls")), [])
    if not calls:
        return "no tool"
    if len(calls) > 1:
        return "parallel"
    function = calls[0]["function"]
    if function["name"] != "calculator":
        return "dates"
    arguments = function["arguments"]
    expression = (json.loads(arguments) if isinstance(arguments, str) else arguments)["expression"]
    return "conversion" if "." in expression else "arithmetic"


def calls_of(turns: list[dict]) -> list[tuple[str, str]]:
    """The (name, arguments as canonical JSON) of every call in some turns, sorted."""
    found = []
    for turn in turns:
        for c in turn.get("tool_calls") or []:
            arguments = c["function"]["arguments"]
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            found.append((c["function"]["name"], json.dumps(arguments, sort_keys=True)))
    return sorted(found)


def with_tools(model, question: str, tools: dict, settings: ChatSettings) -> tuple[str, list, str]:
    """(final answer, its calls (calls_of), transcript) of one question through the chat's tool loop."""
    conversation = Conversation(model, None, settings.sampling.max_new_tokens, [t.schema for t in tools.values()])
    ids, _ = conversation.prompt(question)
    shown = io.StringIO()
    answer_with_tools(model, conversation, ids, settings, settings.sampling, tools, shown, CtrlC())
    last = conversation.turns[-1]
    final = last["content"] if last["role"] == "assistant" and not last.get("tool_calls") else ""
    return final.strip(), calls_of(conversation.turns), f"you> {question}\n{shown.getvalue()}"


def without_tools(model, question: str, reference: str, results: list[str], schemas: list[dict],
                  max_new_tokens: int) -> str:
    """The model's answer, nothing run: started with the reference up to its first tool result."""
    cut = min((reference.find(r) for r in results if r in reference), default=0)
    start = reference[:cut]
    tokenizer = tokenizer_of(model)
    ids = chat_prompt(model, [{"role": "user", "content": question}], schemas) + tokenizer.encode(start)
    budget = min(max_new_tokens, model.config.context_length - len(ids))
    rest = "".join(stream_text(model, ids, Sampling(budget, temperature=0.0, stop_ids=stop_ids(model, chat=True))))
    return (start + rest).strip()


def measure(model, records: list, max_new_tokens: int = 256) -> dict:
    """Per category: records, exact with tools, exact without, calls made; the seconds it took;
    and the transcript of the first record of each category."""
    tools = check_unique(builtin_tools("calculator,clock"))
    settings = ChatSettings(Sampling(max_new_tokens, temperature=0.0))
    counts = defaultdict(lambda: {"records": 0, "with_tools": 0, "without_tools": 0, "calls": 0,
                                  "right_tools": 0, "exact_calls": 0})
    transcripts: dict[str, str] = {}
    started = time.perf_counter()
    for example in records:
        messages, kind = example.messages, category(example.messages)
        question, reference = messages[0]["content"], messages[-1]["content"].strip()
        row = counts[kind]
        row["records"] += 1
        final, calls, shown = with_tools(model, question, tools, settings)
        expected = calls_of(messages)
        row["calls"] += len(calls)
        row["right_tools"] += [n for n, _ in calls] == [n for n, _ in expected]
        row["exact_calls"] += calls == expected
        right = final == reference and (kind != "no tool" or not calls)
        row["with_tools"] += right
        transcripts.setdefault(kind, shown)
        if kind == "no tool":
            row["without_tools"] += right
        else:
            results = [m["content"] for m in messages if m["role"] == "tool"]
            row["without_tools"] += without_tools(model, question, reference, results, example.tools,
                                                  max_new_tokens) == reference
    seconds = time.perf_counter() - started
    table = {k: dict(counts[k]) for k in CATEGORIES if k in counts}
    return {"records": len(records), "seconds": round(seconds, 1), "categories": table, "transcripts": transcripts}


def report(result: dict) -> str:
    lines = [f"{result['records']} test records from {result['checkpoint']} in {result['seconds']:.0f} s",
             "", "| category | records | exact with tools | exact without tools | calls made | the right tools "
             "| exact calls |", "|---|---|---|---|---|---|---|"]
    for kind, row in result["categories"].items():
        n = row["records"]
        lines.append(f"| {kind} | {n} | {row['with_tools'] / n:.0%} | {row['without_tools'] / n:.0%} | {row['calls']} "
                     f"| {row['right_tools'] / n:.0%} | {row['exact_calls'] / n:.0%} |")
    lines += ["", "A transcript of each (the first record of its kind):", ""]
    lines += [shown for shown in result["transcripts"].values()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the fine-tuned model (run or checkpoint folder)")
    p.add_argument("--data", default=TEST_SPLIT, help="tool records, JSONL (default: builtin:tools' test split)")
    p.add_argument("--limit", type=int, help="only the first N test records")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest reply, in tokens (default: 256, the chat's; two calls take ~110 speedrun tokens)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    result = {"checkpoint": args.checkpoint, **measure(load_any(args.checkpoint), read_file(Path(args.data), args.limit),
                                                       args.max_new_tokens)}
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
