"""The calculator: exact integer arithmetic, and one line for anything that is not arithmetic or
would be too large."""

import pytest

from gptforge.tools.calculator import MAX_BITS, CalculatorError, calculate


def test_exact_integer_arithmetic():
    assert calculate("123456789 * 987654321") == str(123456789 * 987654321) == "121932631112635269"
    assert calculate("2 ** 200") == str(1 << 200)
    assert calculate("-(7 - 10) * 3 + 10 // 3 - 10 % 3") == "11"
    assert calculate("10 / 4") == "2.5" and calculate("10 / 2") == "5" and calculate("2^10") == "1024"
    assert calculate("0.1 + 0.2") == "0.3" and calculate("12 * 2.54") == "30.48"
    assert calculate(" 99999999999999999999 + 1 ") == "100000000000000000000"


@pytest.mark.parametrize("expression,message", [
    ("__import__('os').system('true')", "not a call"),
    ("x + 1", "not the name 'x'"),
    ("(1).real", "not an attribute"),
    ("[1, 2][0]", "not an index"),
    ("'a' * 3", "not the value 'a'"),
    ("True + 1", "not the value True"),
    ("9 ** 9 ** 9", "exponent 387420489 is too large"),
    ("2 ** 30000", "too large"),
    ("(10 ** 5000) * (10 ** 5000)", "too large"),
    ("(2 ** 7000) * (2 ** 6999) * 2", "too large"),
    ("(2 ** 7000) * (2 ** 6999) + (2 ** 7000) * (2 ** 6999)", "too large"),
    ("1" * 101, "more than 100 digits"),
    ("1 / 0", "division by zero"),
    ("10.0 ** 400", "too large for a decimal"),
    ("1 +", "cannot read"),
    ("", "empty"),
    ("1+" * 600 + "1", "longer than 1000"),
])
def test_anything_else_is_refused_in_one_line(expression, message):
    with pytest.raises(CalculatorError) as e:
        calculate(expression)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_bits_bound_is_the_bound():
    assert MAX_BITS == 14_000
    assert calculate("(2 ** 7000) * (2 ** 6999)") == str(1 << 13_999)  # 14,000 bits: allowed, and printable
    assert calculate("-(2 ** 7000) * (2 ** 6999)") == str(-(1 << 13_999))
    with pytest.raises(CalculatorError, match="too large"):
        calculate("(2 ** 7000) * (2 ** 7000)")  # 14,001 bits
