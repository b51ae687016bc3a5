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
