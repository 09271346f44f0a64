import datetime as dt

import numpy as np
import pytest

from sicube.dates import day_range, parse_date, parse_span, yyyymmdd
from sicube.errors import BadInput


@pytest.mark.parametrize("value", [20240401, "20240401", "2024-04-01", "2024-04-01T00:00",
                                   dt.date(2024, 4, 1), dt.datetime(2024, 4, 1, 12),
                                   np.datetime64("2024-04-01")])
def test_parse_date_accepts_every_documented_form(value):
    assert parse_date(value) == dt.date(2024, 4, 1)


@pytest.mark.parametrize("value", ["20241301", "2024-02-30", "yesterday", 2024, "", True])
def test_parse_date_refuses_non_days_naming_the_argument(value):
    with pytest.raises(BadInput, match="^start: "):
        parse_date(value, "start")


def test_span_refuses_end_before_start():
    with pytest.raises(BadInput, match="before start"):
        parse_span(20240402, 20240401)


def test_day_range_counts_calendar_days_across_a_leap_day():
    days = list(day_range(*parse_span(20240227, 20240302)))
    assert [yyyymmdd(d) for d in days] == [20240227, 20240228, 20240229, 20240301, 20240302]
