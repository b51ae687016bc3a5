"""Write gptforge's synthetic tool-use set `builtin:tools`.

    python scripts/make_tools.py

Chat records in OpenAI's shape (data/tool_records.py), drawn with a fixed seed (the output is a
pure function of this script and gptforge's tools, which compute every result). The questions:

- exact multi-digit arithmetic: one `calculator` call, its result, the answer;
- date arithmetic: `days_between`, `weekday` or `add_days`;
- unit conversion: a `calculator` call with the factor written out (inches to centimetres, ...);
- questions that need no tool (small sums, words, facts): the answer directly;
- two independent calls in one turn (two products, or a span and a weekday), answered together.

Val and test records are what the chat sends: one question under the built-in tools declared
exactly as `gptforge chat --tools calculator,clock` declares them. Train records are sessions of
1 to 6 questions on one or two topics, under the tools they call and a few others (a fifth declare
them all): the tool schemas are most of a record's tokens, so this reads several questions for
each block, and each answer has to come from its own question.

src/gptforge/corpora/tools/{train,val,test}.jsonl: 3,000 (7,890 questions) / 100 / 150 records
(6.2 MB: every record carries its tools' schemas). The splits are held out from each other: no two
questions share their numbers or dates, and every kind of question has a phrasing that appears
only in val and test.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from gptforge.tokenizer.chat import TOOLS_INTRO, TOOLS_OUTRO, call_text, tools_text
from gptforge.tools.calculator import calculate
from gptforge.tools.clock import add_days, days_between, weekday
from gptforge.tools.registry import builtin_tools

OUT_DIR = ROOT / "src" / "gptforge" / "corpora" / "tools"
SEED = 2026
SIZES = {"train": 3000, "val": 100, "test": 150}
MAX_CHARS = 2400  # a train record's text as rendered: fits tools-cpu's context of 1,536 in the speedrun's BPE
TOOLS = [tool.schema for tool in builtin_tools("calculator,clock")]

# Each kind's phrasings; the last one of each is held out of train.
ARITHMETIC = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b} exactly.",
              "I need the exact value of {a} {op} {b}.", "How much is {a} {op} {b}?"]
DAYS = ["How many days are there from {a} to {b}?", "Count the days between {a} and {b}.",
        "How many days pass from {a} until {b}?", "What is the number of days from {a} to {b}?"]
WEEKDAY = ["What day of the week is {a}?", "Which weekday falls on {a}?", "On what day of the week is {a}?",
           "Tell me the weekday of {a}."]
LATER = ["What date is {n} days after {a}?", "Which date comes {n} days after {a}?",
         "If today is {a}, what is the date in {n} days?", "Add {n} days to {a}: which date is it?"]
UNITS = [("inches", "centimetres", "2.54"), ("miles", "kilometres", "1.609344"), ("pounds", "kilograms", "0.45359237"),
         ("feet", "metres", "0.3048"), ("gallons", "litres", "3.785411784")]
CONVERT = ["How many {to} are {x} {frm}?", "Convert {x} {frm} to {to}.", "What is {x} {frm} in {to}?",
           "Express {x} {frm} in {to}."]
PARALLEL = ["What are {a} * {b} and {c} * {d}?", "Compute both {a} * {b} and {c} * {d}.",
            "I need {a} * {b} and also {c} * {d}.", "Give me {a} * {b}, and {c} * {d}."]
DIRECT = [("What is {a} + {b}?", "{s}"), ("Spell the word {w} backwards.", "{r}"),
          ("Write {w} in capital letters.", "{u}"), ("How many letters are in the word {w}?", "{n}")]
WORDS = "river stone garden window candle forest market silver planet ocean mirror rocket thunder village".split()


class Draw:
    """One split's random draws; `fresh` makes sure no numbers or dates repeat across the set."""

    def __init__(self, rng: random.Random, held_out: bool, used: set):
        self.rng, self.held_out, self.used = rng, held_out, used

    def phrasing(self, options: list[str]) -> str:
        return self.rng.choice(options if self.held_out else options[:-1])

    def fresh(self, make):
        while (value := make()) in self.used:
            pass
        self.used.add(value)
        return value

    def number(self, digits: int) -> int:
        return self.rng.randint(10 ** (digits - 1), 10 ** digits - 1)

    def date(self) -> str:
        return (dt.date(1990, 1, 1) + dt.timedelta(days=self.rng.randrange(60 * 365))).isoformat()


def call(i: int, name: str, arguments: dict) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def with_calls(question: str, calls: list[tuple[str, dict, str]], answer: str) -> list[dict]:
    """question -> one assistant turn of calls -> their results -> the answer."""
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call(i, n, a) for i, (n, a, _) in enumerate(calls)]},
            *({"role": "tool", "tool_call_id": f"call_{i}", "content": r} for i, (_, _, r) in enumerate(calls)),
            {"role": "assistant", "content": answer}]


def arithmetic(d: Draw) -> list[dict]:
    op = d.rng.choice(["*", "*", "+", "-"])
    a, b = d.fresh(lambda: (op, d.number(d.rng.randint(3, 6)), d.number(d.rng.randint(3, 6))))[1:]
    expression = f"{a} {op} {b}"
    result = calculate(expression)
    return with_calls(d.phrasing(ARITHMETIC).format(a=a, op=op, b=b),
                      [("calculator", {"expression": expression}, result)], f"{expression} = {result}.")


def dates(d: Draw) -> list[dict]:
    kind = d.rng.randrange(3)
    if kind == 0:
        a, b = sorted(d.fresh(lambda: (d.date(), d.date())))
        n = days_between(a, b)
        return with_calls(d.phrasing(DAYS).format(a=a, b=b), [("days_between", {"start": a, "end": b}, str(n))],
                          f"There are {n} days from {a} to {b}.")
    if kind == 1:
        a = d.fresh(d.date)
        w = weekday(a)
        return with_calls(d.phrasing(WEEKDAY).format(a=a), [("weekday", {"date": a}, w)], f"{a} is a {w}.")
    a, n = d.fresh(lambda: (d.date(), d.rng.randint(2, 900)))
    later = add_days(a, n)
    return with_calls(d.phrasing(LATER).format(a=a, n=n), [("add_days", {"date": a, "days": n}, later)],
                      f"{n} days after {a} is {later}.")


def conversion(d: Draw) -> list[dict]:
    frm, to, factor = d.rng.choice(UNITS)
    x = d.fresh(lambda: (frm, d.rng.choice([d.rng.randint(2, 999), round(d.rng.uniform(1, 500), 1)])))[1]
    expression = f"{x} * {factor}"
    result = calculate(expression)
    return with_calls(d.phrasing(CONVERT).format(x=x, frm=frm, to=to),
                      [("calculator", {"expression": expression}, result)], f"{x} {frm} is {result} {to}.")


def parallel(d: Draw) -> list[dict]:
    if d.rng.random() < 0.5:
        a, b, c, e = d.fresh(lambda: tuple(d.number(d.rng.randint(3, 5)) for _ in range(4)))
        r1, r2 = calculate(f"{a} * {b}"), calculate(f"{c} * {e}")
        return with_calls(d.phrasing(PARALLEL).format(a=a, b=b, c=c, d=e),
                          [("calculator", {"expression": f"{a} * {b}"}, r1),
                           ("calculator", {"expression": f"{c} * {e}"}, r2)],
                          f"{a} * {b} = {r1} and {c} * {e} = {r2}.")
    a, b = sorted(d.fresh(lambda: (d.date(), d.date())))
    n, w = days_between(a, b), weekday(b)
    return with_calls(f"How many days are there from {a} to {b}, and what weekday is {b}?",
                      [("days_between", {"start": a, "end": b}, str(n)), ("weekday", {"date": b}, w)],
                      f"There are {n} days, and {b} is a {w}.")


def direct(d: Draw) -> list[dict]:
    question, answer = d.rng.choice(DIRECT)
    a, b, w = d.rng.randint(0, 9), d.rng.randint(0, 9), d.rng.choice(WORDS)
    values = dict(a=a, b=b, s=a + b, w=w, r=w[::-1], u=w.upper(), n=len(w))
    return [{"role": "user", "content": question.format(**values)},
            {"role": "assistant", "content": answer.format(**values)}]


KINDS = [(arithmetic, 4), (dates, 3), (conversion, 2), (parallel, 2), (direct, 2)]


def declarer(d: Draw):
    """How a record picks the tools it declares, from the calls it makes. Val and test (and a
    fifth of train) declare all of them, as the chat sends them. The rest of train declares the
    tools its calls use, one at random, and each with probability 1/8: the schemas are
    most of a record's tokens, so fine-tuning reads several times more questions per second, and
    the model learns to read which tools it has."""
    everything = d.held_out or d.rng.random() < 0.2
    extra = {t["function"]["name"]: d.rng.random() < 0.125 for t in TOOLS}
    extra[d.rng.choice(list(extra))] = True

    def declared(messages: list[dict]) -> list[dict]:
        used = {c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
        return [t for t in TOOLS if everything or extra[t["function"]["name"]] or t["function"]["name"] in used]
    return declared


def records(split: str, n: int, rng: random.Random, used: set) -> list[dict]:
    draw = Draw(rng, held_out=split != "train", used=used)
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    out = []
    for _ in range(n):
        # Train's conversations go on for 1 to 6 questions, as a chat session does: the tool block
        # is read once for several questions, and each answer must come from its own question.
        # A session keeps to one or two kinds of question, so it needs few of the tools.
        topics = [rng.choice(kinds) for _ in range(2)]
        turns = [rng.choice(topics)(draw) for _ in range(1 if draw.held_out else rng.randint(1, 6))]
        declared, messages = declarer(draw), turns[0]
        for turn in turns[1:]:  # as many as fit the recipe's context (at most ~0.57 speedrun tokens a character)
            longer = messages + turn
            if rendered_chars(declared(longer), longer) > MAX_CHARS:
                break
            messages = longer
        out.append({"tools": declared(messages), "messages": number_calls(messages)})
    return out


def rendered_chars(tools: list[dict], messages: list[dict]) -> int:
    """The characters of a record's text in the chat template (its markers aside)."""
    calls = [c for m in messages for c in m.get("tool_calls") or []]
    return (len(TOOLS_INTRO + tools_text(tools) + TOOLS_OUTRO) + sum(len(m["content"] or "") for m in messages)
            + sum(len(call_text(c)) for c in calls))


def number_calls(messages: list[dict]) -> list[dict]:
    """Call ids numbered through the whole conversation (call_0, call_1, ...), unique as the API's are."""
    ids: dict[str, str] = {}  # this turn's ids as drawn -> as numbered
    count = 0
    for message in messages:
        for c in message.get("tool_calls") or []:
            ids[c["id"]], c["id"] = f"call_{count}", f"call_{count}"
            count += 1
        if message["role"] == "tool":
            message["tool_call_id"] = ids[message["tool_call_id"]]
    return messages


def main() -> None:
    rng, used = random.Random(SEED), set()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        path = OUT_DIR / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records(split, n, rng, used)))
        print(f"wrote {path} ({n} records, {path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
