"""Tools as the chat runs them: a name, an OpenAI function schema, and the Python function behind
it. The built-in sets (`calculator`, `clock`), a user's module of functions (their schemas derived
from type hints and docstrings), and running one call into the text of its result.

A docstring's first paragraph describes the function; a line `name: text` after it describes the
parameter `name`. Parameters with defaults are optional.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import calculator, clock
from .calls import ToolCall

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}


@dataclass
class Tool:
    name: str
    function: Callable
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}


def _type_schema(hint, where: str) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple) and args:
        return {"type": "array", "items": _type_schema(args[0], where)}
    if origin in _JSON_TYPES:
        return {"type": _JSON_TYPES[origin]}
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1:
            return _type_schema(kinds[0], where)
    raise UserError(f"{where}: the type {hint!r} has no JSON schema here (use int, float, str, bool, list, "
                    "dict, Literal or X | None)")


def _docstring(function: Callable) -> tuple[str, dict[str, str]]:
    """(description, parameter -> description) from a docstring."""
    doc = inspect.getdoc(function) or ""
    first, _, rest = doc.partition("\n\n")
    params = {}
    for line in rest.splitlines():
        name, colon, text = line.strip().partition(":")
        if colon and name.isidentifier():
            params[name] = text.strip()
    return " ".join(first.split()), params


def tool_from_function(function: Callable, name: str | None = None) -> Tool:
    """A Tool for a typed Python function (every parameter needs a type hint)."""
    name = name or function.__name__
    where = f"tool {name}"
    try:
        hints = typing.get_type_hints(function)
    except Exception as e:  # a hint that does not resolve
        raise UserError(f"{where}: its type hints do not resolve ({e})") from None
    description, documented = _docstring(function)
    properties, required = {}, []
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UserError(f"{where}: *args and **kwargs have no schema; name every parameter")
        if param.name not in hints:
            raise UserError(f"{where}: the parameter {param.name!r} has no type hint")
        prop = _type_schema(hints[param.name], f"{where}, parameter {param.name!r}")
        if param.name in documented:
            prop["description"] = documented[param.name]
        properties[param.name] = prop
        if param.default is param.empty:
            required.append(param.name)
    parameters = {"type": "object", "properties": properties, "required": required}
    schema = {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}
    return Tool(name, function, schema)


BUILTIN = {
    "calculator": [(calculator.calculate, "calculator")],
    "clock": [(clock.today, "today"), (clock.days_between, "days_between"), (clock.weekday, "weekday"),
              (clock.add_days, "add_days")],
}


def builtin_tools(names: str) -> list[Tool]:
    """The built-in sets named in a comma-separated list ("calculator,clock")."""
    tools = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in BUILTIN:
            raise UserError(f"unknown tool set {name!r}; built in: {', '.join(BUILTIN)}")
        tools += [tool_from_function(f, n) for f, n in BUILTIN[name]]
    return tools


def module_tools(path: str | Path) -> list[Tool]:
    """Every public function defined in a Python file (the user's own code: it runs on import)."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"--tools-module: {path} is not a .py file")
    spec = importlib.util.spec_from_file_location(f"gptforge_user_tools_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"--tools-module: importing {path} failed: {type(e).__name__}: {e}") from None
    functions = [f for n, f in vars(module).items()
                 if inspect.isfunction(f) and f.__module__ == module.__name__ and not n.startswith("_")]
    if not functions:
        raise UserError(f"--tools-module: {path} defines no public function")
    return [tool_from_function(f) for f in functions]


def check_unique(tools: list[Tool]) -> dict[str, Tool]:
    """The tools by name; two with one name are refused."""
    by_name: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in by_name:
            raise UserError(f"two tools are named {tool.name!r}")
        by_name[tool.name] = tool
    return by_name


def run_call(tools: dict[str, Tool], call: ToolCall) -> str:
    """The result of one call as the text of a tool turn; a refused or failed call gives
    "error: ..." (the model reads it and can try again), never an exception."""
    tool = tools.get(call.name)
    if tool is None:
        return f"error: there is no tool named {call.name!r}"
    parameters = tool.schema["function"]["parameters"]
    unknown = set(call.arguments) - set(parameters["properties"])
    missing = [p for p in parameters["required"] if p not in call.arguments]
    if unknown or missing:
        return (f"error: {call.name} takes {', '.join(parameters['properties']) or 'no arguments'}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(sorted(unknown))}" if unknown else ""))
    try:
        result = tool.function(**call.arguments)
    except Exception as e:  # the tool's own failure is the call's result
        return f"error: {e}"
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
