"""Times as wayy stores them: int64 nanoseconds since the Unix epoch (UTC).

numpy converts ``datetime64`` values to nanoseconds without checking: a time outside
1677-09-21 .. 2262-04-11 wraps around to some other time, and NaT becomes the smallest
int64. Every conversion of a caller's time goes through here, so such a time is refused
instead of silently meaning another one.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from wayy.errors import InvalidInput

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)  # also numpy's NaT
RANGE_TEXT = "1677-09-21 .. 2262-04-11, what int64 nanoseconds since 1970 can hold"
_NS_PER = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
           "h": 3600 * 10**9, "D": 86400 * 10**9, "W": 7 * 86400 * 10**9}
_FINER = ("ps", "fs", "as")  # finer than ns: converting only shrinks the values


def seconds(value, what: str, *, zero: bool = True, forever: bool = False,
            most: float = math.inf) -> float:
    """A duration argument in seconds, checked: a real number (not a bool or a string), not
    NaN, not negative, 0 only if ``zero``, infinite only if ``forever``, at most ``most``.
    InvalidInput naming ``what`` otherwise -- a NaN or negative wait must not become a hang
    or a busy loop."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer,
                                                            np.floating))
    t = float(value) if ok else math.nan
    if math.isnan(t) or t < 0 or (t == 0 and not zero) or (math.isinf(t) and not forever):
        kind = "a positive" if not zero else "a non-negative"
        kind += " number of seconds" + ("" if forever else " (finite)")
        raise InvalidInput(f"{what} must be {kind}, got {value!r}")
    if t > most:
        raise InvalidInput(f"{what} must be at most {most:,.0f} s, got {t!r}")
    return t


class TimeRangeError(ValueError):
    """A time that int64 nanoseconds since the epoch cannot hold, or NaT."""


def datetime64_ns(values) -> np.ndarray:
    """int64 ns since the epoch of ``values`` (a datetime64 scalar or array, any unit).

    TimeRangeError for NaT or a time outside the int64-ns range (never a wrapped value)."""
    a = np.asarray(values)
    if a.dtype.kind != "M":
        raise TypeError(f"not a datetime64: {a.dtype}")
    if np.isnat(a).any():
        raise TimeRangeError("NaT (not a time)")
    unit, count = np.datetime_data(a.dtype)
    if unit in _FINER:
        return a.astype("datetime64[ns]").view(np.int64)
    if unit in ("Y", "M"):
        # calendar units: to days first (exact), once the values are small enough that the
        # conversion cannot wrap; anything beyond ~600 years from 1970 is out of range anyway
        raw = a.view(np.int64)
        limit = 600 if unit == "Y" else 600 * 12
        if raw.size and (np.abs(raw) > limit // max(count, 1) + 1).any():
            raise TimeRangeError(f"outside {RANGE_TEXT}")
        a = a.astype("datetime64[D]")
        unit, count = "D", 1
    if unit not in _NS_PER:
        raise TimeRangeError(f"datetime64 unit {unit!r} is not a time unit wayy knows")
    step = _NS_PER[unit] * count
    raw = a.view(np.int64)
    if step == 1:
        return raw.copy() if raw.ndim else raw
    lo, hi = -(INT64_MAX // step), INT64_MAX // step
    if raw.size and ((raw < lo) | (raw > hi)).any():
        raise TimeRangeError(f"outside {RANGE_TEXT}")
    return raw * np.int64(step)


def datetime64_ns_scalar(value: np.datetime64) -> int:
    """``datetime64_ns`` of one value, as a Python int."""
    return int(datetime64_ns(value))


def iso_ns(text: str) -> int:
    """An ISO-8601 time (UTC unless it says otherwise; a trailing ``Z`` allowed) as int64
    ns since the epoch. ValueError for text that is not such a time, TimeRangeError for a
    time outside the int64-ns range."""
    s = text.strip()
    if "+" in s[10:] or (len(s) > 10 and s[-6:-5] == "-" and ":" in s[-6:]):
        d = datetime.fromisoformat(s)  # an explicit offset
        if d.tzinfo is None:
            d = d.replace(tzinfo=timezone.utc)
        delta = d - datetime(1970, 1, 1, tzinfo=timezone.utc)
        ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
        if not INT64_MIN < ns <= INT64_MAX:
            raise TimeRangeError(f"outside {RANGE_TEXT}")
        return ns
    v = np.datetime64(s[:-1] if s.endswith("Z") else s)
    if np.isnat(v) and s.upper() != "NAT":
        # parsed in ns (nine fractional digits) and wrapped onto NaT
        raise TimeRangeError(f"outside {RANGE_TEXT}")
    return datetime64_ns_scalar(v)
