"""serve/protocol.py's streamed tool calls: however a reply's text is cut into pieces, its deltas
put back together (as OpenAI's clients do) give what the whole text reads as."""

from __future__ import annotations

import json

import pytest

from gptforge.serve.protocol import CallDeltas, Reply
from gptforge.tools.calls import parse_reply

CALL_A = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
CALL_B = '<tool_call>\n{"name": "lookup", "arguments": {"word": "<tool_call> stays text"}}\n</tool_call>'
REPLIES = [
    "Just text, with a newline at the end\n",
    "Let me add them.\n" + CALL_A,
    CALL_A + "\n" + CALL_B,
    "Two at once:\n" + CALL_A + "\n" + CALL_B,
    "Not a call: <tool_call> {",
]
CUT = "Cut short:\n" + CALL_A + '\n<tool_call>\n{"name": "look'  # the last call cut by max_tokens


def reassemble(deltas):
    """The content and the calls (id, name, arguments) that a client builds from the deltas."""
    content, calls = "", {}
    for delta in deltas:
        content += delta.get("content", "")
        for part in delta.get("tool_calls", []):
            call = calls.setdefault(part["index"], {"id": None, "name": "", "arguments": ""})
            call["id"] = part.get("id") or call["id"]
            call["name"] += part.get("function", {}).get("name", "")
            call["arguments"] += part.get("function", {}).get("arguments", "")
    return content, [calls[i] for i in sorted(calls)]


def streamed(text, size):
    tracker, deltas = CallDeltas(), []
    for i in range(0, len(text), size):
        deltas += tracker.push(text[i:i + size])
    return deltas + tracker.finish(), tracker


@pytest.mark.parametrize("text", REPLIES)
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_deltas_reassemble_to_what_the_whole_text_reads_as(text, size):
    deltas, tracker = streamed(text, size)
    content, calls = reassemble(deltas)
    expected = parse_reply(text)
    assert content == (expected.content if expected.calls else text)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [(c.name, c.arguments) for c in expected.calls]
    assert all(c["id"].startswith("call_") for c in calls) and len({c["id"] for c in calls}) == len(calls)
    assert tracker.calls == len(expected.calls)


@pytest.mark.parametrize("size", [1, 5])
def test_a_call_cut_short_goes_out_as_content_after_the_calls_before_it(size):
    """Where the stream and the whole differ: the whole reply is content alone (parse_reply reads
    none of its calls), while the stream has sent each call as it closed; what follows goes out
    as content."""
    content, calls = reassemble(streamed(CUT, size)[0])
    assert content == "Cut short:" + CUT[CUT.index(CALL_A) + len(CALL_A):]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("add", {"a": 2, "b": 3})]
    assert parse_reply(CUT).calls == []


def test_a_call_goes_out_when_it_closes_and_content_before_it_at_once():
    tracker = CallDeltas()
    assert tracker.push("Adding.") == [{"content": "Adding."}]
    assert tracker.push("\n") == []  # it may begin a call
    assert tracker.push("<tool_call>") == []
    assert tracker.push('\n{"name": "add", "arguments": {"a": 2}}\n') == []
    first, arguments = tracker.push("</tool_call>")
    assert first["tool_calls"][0]["function"] == {"name": "add", "arguments": ""}
    assert arguments == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 2}'}}]}
    assert tracker.finish() == []


def test_the_whole_response_holds_the_calls_with_null_content():
    reply = Reply("m", chat=True)
    out = reply.complete([CALL_A, "Let me add.\n" + CALL_A, "text"], ["stop", "length", "stop"],
                         {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, tools=True)
    first, second, third = out["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    assert first["message"]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
    assert second["finish_reason"] == "length" and second["message"]["content"] == "Let me add."
    assert third == {"index": 2, "message": {"role": "assistant", "content": "text"}, "logprobs": None,
                     "finish_reason": "stop"}
