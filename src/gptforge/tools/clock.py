"""The `clock` tools: today's date and time, and date arithmetic (days between two dates, the
weekday of a date, a date some days later). Dates are ISO (YYYY-MM-DD)."""

from __future__ import annotations

import datetime as dt


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date as YYYY-MM-DD") from None


def day_text(day: dt.date) -> str:
    """A date as the clock tools write it: `2026-12-07 (Monday)`."""
    return f"{day.isoformat()} ({day.strftime('%A')})"


def today() -> str:
    """Today's date, weekday and the local time."""
    moment = dt.datetime.now()
    return f"{day_text(moment.date())} {moment.strftime('%H:%M')}"


def days_between(start: str, end: str) -> int:
    """The number of days from the start date to the end date (negative when the end comes first).

    start: the first date, YYYY-MM-DD
    end: the second date, YYYY-MM-DD
    """
    return (_date(end) - _date(start)).days


def weekday(date: str) -> str:
    """The day of the week of a date.

    date: the date, YYYY-MM-DD
    """
    return _date(date).strftime("%A")


def add_days(date: str, days: int) -> str:
    """The date a number of days after a date (before it when days is negative), with its weekday.

    date: the date to start from, YYYY-MM-DD
    days: how many days to add
    """
    if isinstance(days, bool) or not isinstance(days, int) or abs(days) > 3_000_000:
        raise ValueError(f"days must be a whole number of at most 3,000,000, not {days!r}")
    try:
        return day_text(_date(date) + dt.timedelta(days=days))
    except OverflowError:
        raise ValueError("that date is outside the years 1 to 9999") from None
