"""Checks of user-supplied numbers, each failing with one clear UserError line."""

from __future__ import annotations

from numbers import Integral, Real

from .errors import UserError


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def require_int(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """`value` is an integer >= minimum (None passes when optional)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise UserError(f"{name} must be {what}, got {value!r}")


def require_number(name: str, value, minimum: float = 0.0, below: float | None = None,
                   strict: bool = False, optional: bool = False) -> None:
    """`value` is a real number >= minimum (> with strict) and < below (NaN always fails)."""
    if optional and value is None:
        return
    low_ok = isinstance(value, Real) and not isinstance(value, bool) and (
        value > minimum if strict else value >= minimum)
    if not low_ok or (below is not None and not value < below):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        span = f"in [{minimum:g}, {below:g})" if below is not None else bound
        raise UserError(f"{name} must be {span}, got {value!r}")
