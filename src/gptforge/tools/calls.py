"""A model's reply read as content and tool calls, in the Hermes convention the chat template
(tokenizer/chat.py) writes and vLLM's `hermes` parser and llama.cpp read:

    {content}\n<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>\n<tool_call>...

The text before the first <tool_call> is the content (the one newline the template puts before a
call removed); each block holds one JSON object with a "name" and an "arguments" object; a last
block the generation cut before its </tool_call> still counts when its JSON is whole (as vLLM's).
A reply whose blocks do not parse is content alone, with the reason in `error` (vLLM also falls
back to content): the caller shows it rather than running something half-read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..tokenizer.base import TOOL_TOKENS

CALL_OPEN, CALL_CLOSE = TOOL_TOKENS[:2]
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict

    def arguments_json(self) -> str:
        """The arguments as OpenAI's API sends them: a JSON string."""
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class Reply:
    content: str
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None  # why the reply's call blocks were not read


def _call(block: str) -> ToolCall:
    try:
        value = json.loads(block)
    except json.JSONDecodeError as e:
        raise ValueError(f"a tool call is not JSON ({e.msg})") from None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError("a tool call is not an object with a \"name\"")
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string, as OpenAI's API does
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        raise ValueError(f"the arguments of the call to {value['name']!r} are not a JSON object")
    return ToolCall(value["name"], arguments)


def parse_reply(text: str) -> Reply:
    """`text` (a reply, decoded with its special tokens' text) as content and calls."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return Reply(text)
    content = text[:start].removesuffix("\n")
    try:
        calls = [_call(match.group(1)) for match in _BLOCK.finditer(text, start)]
    except ValueError as e:
        return Reply(text, error=str(e))
    return Reply(content, calls)
