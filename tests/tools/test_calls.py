"""Reading calls out of a reply, checked against a small parser written here to vLLM's documented
`hermes` convention, on replies rendered by our own template."""

import json
import re

from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS, gpt2
from gptforge.tokenizer.chat import render
from gptforge.tools.calls import ToolCall, parse_reply

TOKENIZER = gpt2().with_special_tokens(CHAT_TOKENS + TOOL_TOKENS)


def hermes_reference(text):
    """vLLM's hermes convention as documented: every `<tool_call>(.*?)</tool_call>` (or an
    unclosed last one) holds a JSON object {"name", "arguments"}; the content is the text before
    the first <tool_call>, None when there is none."""
    if "<tool_call>" not in text:
        return text, []
    blocks = re.findall(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", text, re.DOTALL)
    calls = [json.loads(closed or unclosed) for closed, unclosed in blocks]
    content = text[:text.index("<tool_call>")]
    return content or None, [(c["name"], c["arguments"]) for c in calls]


def reply_text(content, calls):
    """What a model that learned our template writes after "<|im_start|>assistant\\n": the
    assistant turn's ids up to its <|im_end|>, decoded."""
    message = {"role": "assistant", "content": content,
               "tool_calls": [{"id": str(i), "type": "function", "function": {"name": n, "arguments": a}}
                              for i, (n, a) in enumerate(calls)]}
    ids, _ = render([message], TOKENIZER)
    text = TOKENIZER.decode(ids)
    return text.removeprefix("<|im_start|>assistant\n").removesuffix("<|im_end|>\n")


CASES = [
    ("", [("calculator", {"expression": "12345 * 6789"})]),
    ("Two lookups.", [("weather", {"city": "Zürich"}), ("weather", {"city": "Oslo", "days": [1, 2]})]),
    ("No call needed: 4.", []),
]


def test_our_replies_parse_alike_by_the_hermes_convention():
    for content, calls in CASES:
        text = reply_text(content, calls)
        ours = parse_reply(text)
        ref_content, ref_calls = hermes_reference(text)
        assert [(c.name, c.arguments) for c in ours.calls] == ref_calls == calls
        assert ours.error is None
        if calls:
            assert (ref_content or "").rstrip("\n") == ours.content == content
        else:
            assert ours.content == ref_content == content


def test_an_unclosed_last_call_counts_and_bad_blocks_fall_back_to_content():
    cut = '<tool_call>\n{"name": "today", "arguments": {}}\n'
    assert parse_reply(cut).calls == [ToolCall("today", {})] and hermes_reference(cut)[1] == [("today", {})]
    string_args = '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>'
    assert parse_reply(string_args).calls == [ToolCall("add", {"a": 1})]
    for bad, why in [('<tool_call>\n{"name": "add", "arguments": {"a": }\n</tool_call>', "not JSON"),
                     ('<tool_call>\n["add"]\n</tool_call>', "with a \"name\""),
                     ('<tool_call>{"name": "add", "arguments": [1]}</tool_call>', "not a JSON object")]:
        reply = parse_reply("x" + bad)
        assert reply.calls == [] and reply.content == "x" + bad and why in reply.error
    assert ToolCall("add", {"a": "é"}).arguments_json() == '{"a": "é"}'
