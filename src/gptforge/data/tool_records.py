"""The tool parts of a chat record (OpenAI's shape), checked: the `tools` it declares, the
assistant's `tool_calls`, and the `tool` messages that answer them.

    {"tools": [{"type": "function", "function": {"name": "add", "description": "...",
                "parameters": {"type": "object", "properties": {...}}}}],
     "messages": [{"role": "user", "content": "2+3?"},
                  {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                   "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "5"},
                  {"role": "assistant", "content": "5"}]}

Each mistake is one UserError line naming the record (`where`) and the message. Arguments given as
a JSON string are read into an object, so the template writes every call in one canonical form.
"""

from __future__ import annotations

import json

from ..errors import UserError


def check_tools(tools, where: str) -> list[dict]:
    """A record's `tools` list: OpenAI function tools with distinct names, each one's parameters a
    JSON schema object."""
    if not isinstance(tools, list):
        raise UserError(f"{where}: \"tools\" must be a list of {{\"type\": \"function\", \"function\": {{...}}}} objects")
    names = set()
    for i, tool in enumerate(tools, 1):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise UserError(f"{where}: tool {i} is not {{\"type\": \"function\", \"function\": {{\"name\", "
                            "\"description\", \"parameters\"}}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: tool {i} has no function name")
        if name in names:
            raise UserError(f"{where}: tool {i}: the name {name!r} is declared twice")
        names.add(name)
        if not isinstance(function.get("description", ""), str):
            raise UserError(f"{where}: tool {name!r}: \"description\" must be text")
        parameters = function.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise UserError(f"{where}: tool {name!r}: \"parameters\" must be a JSON schema object "
                            "({\"type\": \"object\", \"properties\": {...}})")
    return tools


def declared_names(tools: list[dict] | None) -> set[str]:
    return {tool["function"]["name"] for tool in tools or []}


def check_tool_calls(calls, names: set[str], where: str) -> list[dict]:
    """An assistant message's `tool_calls`, each to a declared tool with JSON-object arguments,
    as {"id", "type": "function", "function": {"name", "arguments": {...}}}."""
    if not isinstance(calls, list) or not calls:
        raise UserError(f"{where}: \"tool_calls\" must be a non-empty list")
    out = []
    for i, call in enumerate(calls, 1):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise UserError(f"{where}: call {i} is not {{\"id\", \"type\": \"function\", \"function\": "
                            "{\"name\", \"arguments\"}}")
        name, arguments = function.get("name"), function.get("arguments", {})
        if name not in names:
            raise UserError(f"{where}: call {i} is to {name!r}, which the record's \"tools\" do not declare"
                            + (f" (declared: {', '.join(sorted(names))})" if names else ""))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: call {i} to {name!r}: the arguments are not JSON ({e.msg})") from None
        if not isinstance(arguments, dict):
            raise UserError(f"{where}: call {i} to {name!r}: the arguments must be a JSON object")
        call_id = call.get("id", f"call_{i}")
        if not isinstance(call_id, str):
            raise UserError(f"{where}: call {i}'s id must be text")
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    return out


def check_tool_answer(message: dict, pending: dict[str, str], where: str) -> None:
    """A `tool` message answers one call of the assistant turn before it that is not answered yet
    (`pending`: call id -> name, from which it is removed)."""
    call_id = message.get("tool_call_id")
    if call_id not in pending:
        waiting = f" (open calls: {', '.join(pending)})" if pending else " (no call is waiting for a result)"
        raise UserError(f"{where}: the tool message answers {call_id!r}, which is no call of the assistant "
                        f"turn before it{waiting}")
    del pending[call_id]
