"""Tools from Python functions: schemas from type hints and docstrings, the built-in sets, a user's
module, and running calls (a bad call is a result the model reads, never an exception)."""

from typing import Literal

import pytest

from gptforge.errors import UserError
from gptforge.tools.calls import ToolCall
from gptforge.tools.registry import builtin_tools, check_unique, module_tools, run_call, tool_from_function


def convert(value: float, unit: Literal["km", "mi"], places: int | None = None, tags: list[str] = ()) -> str:
    """Convert a distance.

    It says more here, which is not the description.

    value: how far
    unit: the unit of value
    """
    return f"{value}{unit}"


def test_a_schema_from_type_hints_and_the_docstring():
    schema = tool_from_function(convert).schema
    assert schema == {"type": "function", "function": {
        "name": "convert", "description": "Convert a distance.",
        "parameters": {"type": "object", "required": ["value", "unit"], "properties": {
            "value": {"type": "number", "description": "how far"},
            "unit": {"enum": ["km", "mi"], "description": "the unit of value"},
            "places": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}}}}}}


def test_functions_without_a_schema_are_refused():
    def untyped(x):
        return x

    def star(*numbers: int):
        return 0

    def odd(x: set):
        return x

    for function, message in [(untyped, "'x' has no type hint"), (star, r"\*args"), (odd, "has no JSON schema")]:
        with pytest.raises(UserError, match=message):
            tool_from_function(function)


def test_builtin_sets_and_running_calls():
    tools = check_unique(builtin_tools("calculator, clock"))
    assert list(tools) == ["calculator", "today", "days_between", "weekday", "add_days"]
    assert run_call(tools, ToolCall("calculator", {"expression": "99999 * 99999"})) == "9999800001"
    assert run_call(tools, ToolCall("days_between", {"start": "2024-01-01", "end": "2025-01-01"})) == "366"
    assert run_call(tools, ToolCall("calculator", {"expression": "open('x')"})).startswith("error: only numbers")
    assert run_call(tools, ToolCall("shell", {})) == "error: there is no tool named 'shell'"
    assert run_call(tools, ToolCall("weekday", {"day": "x"})) == "error: weekday takes date; missing date; unknown day"
    with pytest.raises(UserError, match="unknown tool set 'web'; built in: calculator, clock"):
        builtin_tools("calculator,web")
    with pytest.raises(UserError, match="two tools are named 'calculator'"):
        check_unique(builtin_tools("calculator,calculator"))


def test_a_users_module(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text('import math\n\ndef area(radius: float) -> float:\n    """Area of a circle."""\n'
                    '    return math.pi * radius ** 2\n\ndef _helper(): pass\n')
    (tool,) = module_tools(path)  # math's functions and _helper are not tools
    assert tool.name == "area" and tool.schema["function"]["description"] == "Area of a circle."
    assert run_call({"area": tool}, ToolCall("area", {"radius": 1})) == "3.141592653589793"
    (tmp_path / "broken.py").write_text("raise RuntimeError('nope')\n")
    for bad, message in [(tmp_path / "broken.py", "importing .* failed: RuntimeError: nope"),
                         (tmp_path / "none.py", "is not a .py file")]:
        with pytest.raises(UserError, match=message):
            module_tools(bad)
