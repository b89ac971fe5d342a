"""Dates for the date and currentdate tests (RFC 5260 §4): parsing, zones, date parts."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from email.utils import format_datetime, parsedate_tz

DATE_PARTS = frozenset({
    "year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
    "iso8601", "std11", "zone", "weekday",
})
_ZONE = re.compile(r"([+-])([0-9]{2})([0-9]{2})\Z")
_MINUS_ZERO = re.compile(r"-0000\s*(?:\([^()]*\)\s*)?\Z")
_MJD_EPOCH = date(1858, 11, 17)
MAX_DATE_LENGTH = 256   # a Date header longer than this is not a date


class Moment:
    """A point in time seen in one zone; ``unknown_zone`` for RFC 5322's -0000."""

    __slots__ = ("dt", "unknown_zone")

    def __init__(self, dt: datetime, unknown_zone: bool = False) -> None:
        self.dt, self.unknown_zone = dt, unknown_zone

    def to_zone(self, zone: tzinfo) -> "Moment":
        return Moment(self.dt.astimezone(zone))


def parse_zone(text: str) -> timezone | None:
    """+hhmm / -hhmm (RFC 5260 :zone) as a timezone, or None if malformed."""
    m = _ZONE.match(text.strip())
    if m is None or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        return None
    offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-offset if m.group(1) == "-" else offset)


def parse_date(value: str) -> Moment | None:
    """An RFC 5322 date-time in its own zone, or None if it is not one."""
    if len(value) > MAX_DATE_LENGTH:
        return None
    try:
        t = parsedate_tz(value)
        if t is None:
            return None
        unknown = t[9] is None or (t[9] == 0 and bool(_MINUS_ZERO.search(value.strip())))
        offset = t[9] or 0
        if abs(offset) >= 86400:
            return None
        dt = datetime(*t[:6], tzinfo=timezone(timedelta(seconds=offset)))  # type: ignore[misc]
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    return Moment(dt, unknown_zone=unknown)


def _zone_text(m: Moment, colon: bool = False) -> str:
    if m.unknown_zone:
        return "-00:00" if colon else "-0000"
    offset = m.dt.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    h, mi = divmod(abs(minutes), 60)
    return f"{sign}{h:02d}:{mi:02d}" if colon else f"{sign}{h:02d}{mi:02d}"


def date_part(m: Moment, part: str) -> str:
    """The text of one date part (RFC 5260 §4.2)."""
    d = m.dt
    part = part.lower()
    if part == "year":
        return f"{d.year:04d}"
    if part == "month":
        return f"{d.month:02d}"
    if part == "day":
        return f"{d.day:02d}"
    if part == "date":
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"
    if part == "julian":
        return str((d.date() - _MJD_EPOCH).days)
    if part == "hour":
        return f"{d.hour:02d}"
    if part == "minute":
        return f"{d.minute:02d}"
    if part == "second":
        return f"{d.second:02d}"
    if part == "time":
        return f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    if part == "iso8601":
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}{_zone_text(m, True)}"
    if part == "std11":
        text = format_datetime(d)
        return text[:-5] + "-0000" if m.unknown_zone else text
    if part == "zone":
        return _zone_text(m)
    if part == "weekday":
        return str((d.weekday() + 1) % 7)   # 0 is Sunday
    raise ValueError(f"unknown date part {part!r}")
