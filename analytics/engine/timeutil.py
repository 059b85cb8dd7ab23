"""Calendar arithmetic in a timezone, scalar and over numpy arrays of unix timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

# Timestamps that datetime can represent in any zone (years 2..9998).
MIN_TS = -62104060800.0
MAX_TS = 253339200000.0


@lru_cache(maxsize=64)
def zone(name: str):
    if name == "UTC":
        return UTC
    return ZoneInfo(name)


def in_range(moment: float) -> bool:
    return MIN_TS <= moment <= MAX_TS


def offset_at(moment: float, tz: tzinfo) -> float:
    offset = datetime.fromtimestamp(moment, tz).utcoffset()
    assert offset is not None  # a datetime with a tzinfo always has an offset
    return offset.total_seconds()


def offsets(ts: np.ndarray, tz) -> np.ndarray:
    """UTC offset in seconds at each timestamp (timestamps must be in range)."""
    count = len(ts)
    if tz is UTC or count == 0:
        return np.zeros(count)
    # Offsets change rarely: compute them per 15-minute bucket, and per message only in a
    # bucket where the offset changes.
    bucket = np.floor(ts / 900.0)
    uniq, inv = np.unique(bucket, return_inverse=True)
    start = np.array([offset_at(bucket_key * 900.0, tz) for bucket_key in uniq.tolist()])
    end = np.array([offset_at(bucket_key * 900.0 + 899.999999, tz) for bucket_key in uniq.tolist()])
    out = start[inv]
    mixed = np.flatnonzero(start != end)
    if len(mixed):
        rows = np.flatnonzero(np.isin(inv, mixed))
        out[rows] = [offset_at(moment, tz) for moment in ts[rows].tolist()]
    return out


def civil_from_days(days: np.ndarray):
    """(year, month, day) from days since 1970-01-01 (H. Hinnant's algorithm)."""
    shifted = days.astype(np.int64) + 719468
    era = np.floor_divide(shifted, 146097)
    doe = shifted - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    year = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = np.where(month <= 2, year + 1, year)
    return year, month, day


def fields(ts: np.ndarray, tz) -> dict[str, np.ndarray]:
    local = ts + offsets(ts, tz)
    days = np.floor(local / 86400.0)
    secs = local - days * 86400.0
    year, month, day = civil_from_days(days)
    return {
        "days": days.astype(np.int64),
        "hour": np.floor(secs / 3600.0),
        "minute": np.floor((secs - np.floor(secs / 3600.0) * 3600.0) / 60.0),
        "day": day.astype(np.float64),
        "month": month.astype(np.float64),
        "year": year.astype(np.float64),
        "weekday": ((days.astype(np.int64) + 3) % 7 + 1).astype(np.float64),
    }


def scalar_field(name: str, moment: float, tz) -> float:
    local = datetime.fromtimestamp(moment, tz)
    if name == "hour":
        return float(local.hour)
    if name == "minute":
        return float(local.minute)
    if name == "day":
        return float(local.day)
    if name == "month":
        return float(local.month)
    if name == "year":
        return float(local.year)
    if name == "weekday":
        return float(local.isoweekday())
    raise ValueError(name)


def period_keys(ts: np.ndarray, tz, split: str) -> np.ndarray:
    """An integer per timestamp that changes exactly at the calendar boundaries of ``split``.
    For ``hour`` the offset is folded in, so the repeated hour of a DST fall-back is two hours."""
    off = offsets(ts, tz)
    local = ts + off
    days = np.floor(local / 86400.0).astype(np.int64)
    if split == "hour":
        return np.floor(local / 3600.0).astype(np.int64) * 4 + ((off // 3600).astype(np.int64) % 4)
    if split == "day":
        return days
    if split == "week":
        return (days + 3) // 7
    year, month, _ = civil_from_days(days)
    if split == "month":
        return year * 12 + (month - 1)
    if split == "year":
        return year
    raise ValueError(split)


def strftime(moment: float, tz, fmt: str) -> str:
    return datetime.fromtimestamp(moment, tz).strftime(fmt)
