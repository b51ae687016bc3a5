"""The clock tools against datetime's own arithmetic and a calendar fact."""

import datetime as dt
import re

import pytest

from gptforge.tools.clock import add_days, days_between, today, weekday


def test_date_arithmetic():
    assert days_between("2024-02-01", "2024-03-01") == 29  # a leap year
    assert days_between("2026-12-25", "2026-01-01") == -358
    assert weekday("1969-07-20") == "Sunday"  # the Moon landing
    assert add_days("2024-12-30", 3) == "2025-01-02 (Thursday)"
    assert add_days("2000-03-01", -1) == "2000-02-29 (Tuesday)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \([A-Z][a-z]+day\) \d\d:\d\d", today())
    assert today()[:10] in {dt.date.today().isoformat(), (dt.date.today() - dt.timedelta(days=1)).isoformat()}


def test_bad_dates_say_what_is_wrong():
    with pytest.raises(ValueError, match="'31/12/2024' is not a date as YYYY-MM-DD"):
        weekday("31/12/2024")
    with pytest.raises(ValueError, match="outside the years"):
        add_days("9999-12-31", 1)
    with pytest.raises(ValueError, match="whole number"):
        add_days("2024-01-01", 1.5)
