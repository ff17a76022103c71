"""Date parameters of the statistics and event commands (``Y-m-d``, UTC days).

001: StartDate/EndDate are ``Y-m-d`` (strict); an invalid value falls back to the default;
EndDate is clamped to be no earlier than StartDate. A period covers whole UTC days, printed
``YYYY-MM-DD 00:00:00`` to ``YYYY-MM-DD 23:59:59``. A day before 1970-01-01 (no event is
older than the Unix epoch) or after 9999-12-30 (the day after it must exist) is invalid too.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from relay.admin.params import Params

_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
FIRST_DAY = dt.date(1970, 1, 1)
LAST_DAY = dt.date.max - dt.timedelta(days=1)


def parse_day(text: str | None) -> dt.date | None:
    """A strict ``Y-m-d`` date from FIRST_DAY to LAST_DAY, or None."""
    if not text or not _DAY.match(text.strip()):
        return None
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        return None
    return day if FIRST_DAY <= day <= LAST_DAY else None


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def day_start(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC days ``first`` .. ``last`` (inclusive)."""

    first: dt.date
    last: dt.date

    @property
    def since(self) -> float:
        return day_start(self.first)

    @property
    def until(self) -> float:
        """Exclusive end: midnight after ``last``."""
        return day_start(self.last + dt.timedelta(days=1))

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period of the same length that ends the second before this one starts (cut
        at the first day the calendar has, for a period of thousands of years)."""
        last = self.first - dt.timedelta(days=1)
        length = min(self.days, (last - dt.date.min).days + 1)
        return Period(last - dt.timedelta(days=length - 1), last)

    def start_text(self) -> str:
        return f"{self.first.isoformat()} 00:00:00"

    def end_text(self) -> str:
        return f"{self.last.isoformat()} 23:59:59"


def period(p: Params, default_days: int) -> Period:
    """StartDate/EndDate with 001's defaults: ``default_days`` ago to today."""
    end = parse_day(p.str("EndDate")) or today()
    start = parse_day(p.str("StartDate")) or (end - dt.timedelta(days=default_days))
    return Period(start, max(start, end))


def optional_period(p: Params) -> tuple[float | None, float | None]:
    """StartDate/EndDate as optional filters: each bound applies only when given and valid."""
    start = parse_day(p.str("StartDate"))
    end = parse_day(p.str("EndDate"))
    if start and end and end < start:
        end = start
    return (
        day_start(start) if start else None,
        day_start(end + dt.timedelta(days=1)) if end else None,
    )
