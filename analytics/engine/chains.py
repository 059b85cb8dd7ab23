"""Calculator chaining: what a calculator reads of another calculator's intervals of the same
device (docs/engine.md, "Calculator chaining").

Three parts read them: the ``calc`` selector (a message is on while it lies in one of them), the
``calculator`` counter (the intervals inside this one) and ``messages_source`` of type
``calculator`` (each interval is a message). The engine never fetches them: the caller passes,
per source calculator id, an ``IntervalReader`` (``read_intervals``/``interval_before``, the
callables ``recalculate`` takes for an assignment's own intervals; ``ListedIntervals`` over a
list), and the engine reads what overlaps the messages it works on.

A source's intervals are taken with their engine fields and counters only (``id``, ``begin``,
``end``, ``duration``, counters): the caller leaves out ``timestamp`` and user fields, which no
recalculation of the source is bound to keep the same.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .messages import Messages

# The fields of a source interval that are not parameters of the message it becomes
# (``messages_source``): its ``id`` is the message's timestamp.
_NOT_PARAMETERS = ("id",)


class IntervalReader(Protocol):
    """Another calculator's stored intervals of the device."""

    def read_intervals(self, begin: float, end: float) -> list[dict]:
        """The intervals whose ``begin`` is in ``[begin, end)``, sorted by begin."""
        ...

    def interval_before(self, moment: float) -> dict | None:
        """The interval with the largest ``begin < moment``, or ``None``."""
        ...


class ListedIntervals:
    """An ``IntervalReader`` over a list of intervals (a full calculation, the tests)."""

    def __init__(self, intervals: Iterable[Mapping]):
        self.intervals = sorted((dict(interval) for interval in intervals),
                                key=lambda interval: (interval["begin"], interval["id"]))
        self._begins = [interval["begin"] for interval in self.intervals]

    def read_intervals(self, begin: float, end: float) -> list[dict]:
        return self.intervals[bisect.bisect_left(self._begins, begin):bisect.bisect_left(self._begins, end)]

    def interval_before(self, moment: float) -> dict | None:
        i = bisect.bisect_left(self._begins, moment)
        return self.intervals[i - 1] if i else None


Sources = Mapping[int, IntervalReader]
# What a caller may give: each source as a reader or as a list of its intervals.
SourcesGiven = Mapping[int, "IntervalReader | Sequence[Mapping]"]


@dataclass
class SourceSpan:
    """A source's intervals that overlap a span of time, sorted by begin, with their begins, ends
    and the running maximum of the ends (``reach``)."""

    intervals: list[dict]
    begins: np.ndarray
    ends: np.ndarray
    reach: np.ndarray

    @classmethod
    def of(cls, intervals: list[dict]) -> SourceSpan:
        begins = np.array([interval["begin"] for interval in intervals], dtype=np.float64)
        ends = np.array([interval["end"] for interval in intervals], dtype=np.float64)
        reach = np.maximum.accumulate(ends) if len(ends) else ends
        return cls(intervals, begins, ends, reach)

    def membership(self, stamps: np.ndarray) -> np.ndarray:
        """Per timestamp, the index of the latest-beginning interval at or before it when an
        interval up to that one reaches it (a message at an interval's begin or end is inside
        it), else -1."""
        if not len(self.begins):
            return np.full(len(stamps), -1, dtype=np.int64)
        index = np.searchsorted(self.begins, stamps, "right") - 1
        inside = (index >= 0) & (self.reach[np.maximum(index, 0)] >= stamps)
        return np.where(inside, index, -1).astype(np.int64)

    def within(self, begin: float, end: float, *, start_before: bool, finish_after: bool) -> list[dict]:
        """The intervals inside ``[begin, end]``; with ``start_before`` also those that begin
        before it and reach into it, with ``finish_after`` also those that begin in it and end
        after it. Oldest first."""
        lo = int(np.searchsorted(self.begins, begin, "left"))
        hi = int(np.searchsorted(self.begins, end, "right"))
        found: list[dict] = []
        if start_before:
            j = lo - 1
            earlier = []
            while j >= 0 and self.reach[j] >= begin:
                if self.ends[j] >= begin and (finish_after or self.ends[j] <= end):
                    earlier.append(self.intervals[j])
                j -= 1
            found.extend(reversed(earlier))
        for j in range(lo, hi):
            if finish_after or self.ends[j] <= end:
                found.append(self.intervals[j])
        return found


def source_span(reader: IntervalReader, begin: float, end: float) -> SourceSpan:
    """The reader's intervals that overlap ``[begin, end]``. An interval that begins before
    ``begin`` is found as the latest one beginning before it: a calculator's intervals overlap at
    most at a shared message (the merge options), so no earlier one reaches further."""
    found = []
    before = reader.interval_before(begin)
    if before is not None and before["end"] >= begin:
        found.append(before)
    found.extend(reader.read_intervals(begin, float(np.nextafter(end, math.inf))))
    return SourceSpan.of(found)


def source_spans(ids: Iterable[int], sources: Sources | None, stamps: np.ndarray) -> dict[int, SourceSpan]:
    """For each source calculator id, its intervals overlapping the span of ``stamps`` (none when
    the caller has no reader for it: the device is not assigned to it)."""
    spans = {}
    for calc_id in ids:
        reader = None if sources is None else sources.get(calc_id)
        if reader is None or not len(stamps):
            spans[calc_id] = SourceSpan.of([])
        else:
            spans[calc_id] = source_span(reader, float(stamps[0]), float(stamps[-1]))
    return spans


def message_time(interval: Mapping) -> float:
    """The timestamp of the message a source interval becomes (``messages_source``): its id in
    seconds, its begin to the microsecond (two intervals sharing a begin are a microsecond apart
    by their ids, so every interval is a message of its own)."""
    return interval["id"] / 1_000_000


def intervals_as_messages(intervals: Sequence[Mapping]) -> Messages:
    """Another calculator's intervals as the messages of a calculator whose ``messages_source``
    is that calculator: one message per interval at ``message_time``, its other fields
    (``begin``, ``end``, ``duration``, counters) as parameters."""
    rows = []
    for interval in intervals:
        message = {key: value for key, value in interval.items() if key not in _NOT_PARAMETERS}
        message["timestamp"] = message_time(interval)
        rows.append(message)
    return Messages.from_dicts(rows)


def messages_of(reader: IntervalReader, begin: float, end: float) -> Messages:
    """The messages with ``begin <= timestamp < end`` of a ``messages_source`` calculator reading
    ``reader``'s intervals (``recalculate``'s ``read_messages``). An interval's message time is
    its begin to the microsecond, so the intervals are read a millisecond wider and cut."""
    lo = begin - 1e-3 if math.isfinite(begin) else begin
    hi = end + 1e-3 if math.isfinite(end) else end
    messages = intervals_as_messages(reader.read_intervals(lo, hi))
    stamps = messages.timestamps
    return messages.slice(int(np.searchsorted(stamps, begin, "left")), int(np.searchsorted(stamps, end, "left")))
