"""Chat records with tools (OpenAI's shape): read and checked, calls canonical, every mistake one
line naming the file and the record."""

import json

import pytest

from gptforge.data.instructions import read_examples
from gptforge.errors import UserError

ADD = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CLOCK = {"type": "function", "function": {"name": "today", "parameters": {"type": "object", "properties": {}}}}


def record(*, tools=(ADD, CLOCK), calls=None, answers=None, final="5 and 9"):
    calls = calls if calls is not None else [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
        {"id": "c2", "type": "function", "function": {"name": "add", "arguments": {"a": 4, "b": 5}}}]
    answers = answers if answers is not None else [("c1", "5"), ("c2", "9")]
    messages = [{"role": "user", "content": "2+3 and 4+5?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                *({"role": "tool", "tool_call_id": i, "content": c} for i, c in answers),
                {"role": "assistant", "content": final}]
    return {"tools": list(tools), "messages": messages}


def write(tmp_path, records):
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_tool_record_reads_with_canonical_calls(tmp_path):
    (example,), _ = read_examples(str(write(tmp_path, [record()])))
    assert example.tools == [ADD, CLOCK] and example.uses_tools
    call = example.messages[1]
    assert call["content"] == "" and [c["function"]["arguments"] for c in call["tool_calls"]] == [{"a": 2, "b": 3},
                                                                                                  {"a": 4, "b": 5}]
    assert example.messages[2] == {"role": "tool", "content": "5", "tool_call_id": "c1"}
    plain = {"tools": [ADD], "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (no_call,), _ = read_examples(str(write(tmp_path, [plain])))
    assert no_call.uses_tools and no_call.messages == plain["messages"]  # tools declared, none needed


def bad_schema():
    return {"type": "function", "function": {"name": "add", "parameters": "a and b"}}


@pytest.mark.parametrize("bad,message", [
    (record(calls=[{"id": "c1", "type": "function", "function": {"name": "sub", "arguments": "{}"}}],
            answers=[("c1", "0")]), "message 2: call 1 is to 'sub', which the record's \"tools\" do not declare"),
    (record(calls=[{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{a: 2}"}}],
            answers=[("c1", "0")]), "message 2: call 1 to 'add': the arguments are not JSON"),
    (record(calls=[{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "[2, 3]"}}],
            answers=[("c1", "0")]), "the arguments must be a JSON object"),
    (record(answers=[("c1", "5"), ("c9", "9")]), "message 4: the tool message answers 'c9', which is no call"),
    (record(answers=[("c1", "5"), ("c1", "5")]), "answers 'c1', which is no call"),  # answered twice
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "1"},
                   {"role": "assistant", "content": "y"}]}, "no call is waiting for a result"),
    (record(tools=[bad_schema()]), "tool 'add': \"parameters\" must be a JSON schema object"),
    (record(tools=[ADD, ADD]), "tool 2: the name 'add' is declared twice"),
    (record(tools=[{"name": "add"}]), "tool 1 is not {\"type\": \"function\""),
    ({"tools": {"add": 1}, "messages": []}, "\"tools\" must be a list"),
    (record(tools=()), "which the record's \"tools\" do not declare"),
])
def test_bad_tool_records_are_one_line_naming_file_and_record(tmp_path, bad, message):
    path = write(tmp_path, [record(), bad])
    with pytest.raises(UserError) as e:
        read_examples(str(path))
    text = str(e.value)
    assert message in text and f"{path} record 2" in text and "\n" not in text


def test_builtin_tools_is_the_seeded_scripts_output_with_held_out_splits():
    import importlib.util
    import random
    from importlib import resources
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_tools.py"
    spec = importlib.util.spec_from_file_location("make_tools", script)
    make_tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tools)
    rng, used = random.Random(make_tools.SEED), set()
    folder = resources.files("gptforge") / "corpora" / "tools"
    splits = {}
    for split, n in make_tools.SIZES.items():
        bundled = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert bundled == json.loads(json.dumps(make_tools.records(split, n, rng, used)))  # reproducible
        splits[split] = bundled
    assert sum(len((folder / f"{s}.jsonl").read_bytes()) for s in splits) < 7_000_000
    train, val = read_examples("builtin:tools")  # every record passes the checks
    assert (len(train), len(val)) == (3000, 100)
    # val and test are what the chat sends: every tool declared, one question; train's sessions go on
    # for several questions under fewer tools, within the recipe's context
    every = make_tools.TOOLS
    assert all(r["tools"] == every for s in ("val", "test") for r in splits[s])
    assert all(sum(m["role"] == "user" for m in r["messages"]) == 1 for s in ("val", "test") for r in splits[s])
    sessions = [sum(m["role"] == "user" for m in r["messages"]) for r in splits["train"]]
    assert max(sessions) == 6 and sum(n > 1 for n in sessions) > len(sessions) / 2
    assert 0 < sum(r["tools"] == every for r in splits["train"]) < len(splits["train"]) / 3
    assert all(make_tools.rendered_chars(r["tools"], r["messages"]) <= make_tools.MAX_CHARS
               for r, n in zip(splits["train"], sessions) if n > 1)
    # call ids are unique within a record, as the API's are
    assert all(len(set(i)) == len(i) for i in ([c["id"] for m in r["messages"] for c in m.get("tool_calls") or []]
                                              for r in splits["train"]))
    # the questions that need a tool never repeat across splits (those that need none are a small space)
    questions = {s: {q["content"] for r in rs for q, a in zip(r["messages"], r["messages"][1:])
                     if q["role"] == "user" and a.get("tool_calls")} for s, rs in splits.items()}
    assert not questions["train"] & questions["val"] and not questions["train"] & questions["test"]
    held_out = make_tools.ARITHMETIC[-1].split("{")[0]  # a phrasing train never uses
    assert not any(q.startswith(held_out) for q in questions["train"]) and any(q.startswith(held_out) for q in questions["test"])
    calls = [len(m.get("tool_calls") or []) for r in splits["test"] for m in r["messages"]]
    no_tool = [r for r in splits["test"] if len(r["messages"]) == 2]
    assert 2 in calls and len(no_tool) > 10
