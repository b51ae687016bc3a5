"""The `calculator` tool: arithmetic on numbers, exact on integers, read with `ast` and never
`eval`. Numbers, + - * / // % ** (and unary + -), parentheses: nothing else parses, so no name,
call or attribute can run. Every size is bounded before it is computed (the expression's length, a
literal's digits, an exponent, a result's bits), so no input can make it run for long."""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 1000  # of an expression
MAX_DIGITS = 100  # of one number written in it
MAX_BITS = 14_000  # of any integer it computes (about 4,200 digits: under Python's 4,300-digit str limit)
MAX_EXPONENT = 10_000

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot compute (one line)."""


def _too_big(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise CalculatorError(f"a result is too large (over {MAX_BITS:,} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("a result is too large for a decimal number")
    return value


def _divide(a: int | float, b: int | float) -> int | float:
    if isinstance(a, int) and isinstance(b, int) and b and a % b == 0:
        return a // b  # exact: 10 / 2 is 5, not 5.0
    return a / b


def _power(a: int | float, b: int | float) -> int | float:
    if abs(b) > MAX_EXPONENT:
        raise CalculatorError(f"the exponent {b} is too large (at most {MAX_EXPONENT:,})")
    if isinstance(a, int) and isinstance(b, int) and b > 0 and max(a.bit_length() - 1, 0) * b > MAX_BITS:
        raise CalculatorError(f"a result is too large (over {MAX_BITS:,} bits)")
    result = a ** b
    if isinstance(result, complex):
        raise CalculatorError("a negative number to a fractional power has no real value")
    return result


def _binary(op: ast.operator, a: int | float, b: int | float) -> int | float:
    if isinstance(op, ast.Mult) and isinstance(a, int) and isinstance(b, int) \
            and a.bit_length() + b.bit_length() > MAX_BITS + 1:
        raise CalculatorError(f"a result is too large (over {MAX_BITS:,} bits)")
    if isinstance(op, ast.Pow):
        return _power(a, b)
    if isinstance(op, ast.Div):
        return _divide(a, b)
    return _BINARY[type(op)](a, b)


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, int) and len(str(node.value)) > MAX_DIGITS:
            raise CalculatorError(f"a number has more than {MAX_DIGITS} digits")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a, b = _value(node.left), _value(node.right)
        try:
            return _too_big(_binary(node.op, a, b))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("a result is too large for a decimal number") from None
    what = {ast.Call: "a call", ast.Attribute: "an attribute", ast.Subscript: "an index"}.get(
        type(node), type(node).__name__.lower())
    if isinstance(node, ast.Name):
        what = f"the name {node.id!r}"
    elif isinstance(node, ast.Constant):
        what = f"the value {node.value!r}"
    raise CalculatorError(f"only numbers, + - * / // % ** and parentheses are allowed, not {what}")


def format_number(value: int | float) -> str:
    """A result as text: integers exactly, decimals to 12 significant digits (no float noise)."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    return str(value)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.

    expression: the arithmetic to do, e.g. (1234 * 5678) + 9
    """
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("the expression is empty")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError):
        raise CalculatorError(f"cannot read {expression!r} as arithmetic") from None
    return format_number(_value(tree.body))
