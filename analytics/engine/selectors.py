"""Selectors (DESIGN 7.4) over a frame of validated messages, vectorised.

Each selector gives its intervals as inclusive index ranges ``first``/``last`` into the frame, with
``open_`` telling which of them reach the newest message without a rule having closed them.
``clean_cuts`` answers, for the windowed recalculation, where the selector's result provably
splits into "before" and "after" (see docs/engine.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .calculator import SelectorSpec
from .chains import SourceSpan
from .columns import ColumnKind
from .expressions import Frame
from .geo import first_containing
from .timeutil import period_keys


@dataclass
class Runs:
    first: np.ndarray
    last: np.ndarray
    open_: np.ndarray  # bool per run
    geofence_idx: np.ndarray | None = None  # per message, for geofence selectors


def _empty() -> Runs:
    empty = np.zeros(0, dtype=np.int64)
    return Runs(empty, empty, np.zeros(0, bool))


# The state of a message the selector's ``validate_message`` does not hold for: the selector
# ignores it, keeping the state of the message before it.
IGNORED = -2


def raw_state(spec: SelectorSpec, frame: Frame, chained: Mapping[int, SourceSpan] | None = None):
    """Per message: 1 on, 0 off, -1 unknown (after ``invert``), ``IGNORED`` where the selector's
    ``validate_message`` does not hold, plus value codes for ``change`` and ``calc`` (which
    source interval holds the message, -1 none) and the geofence index for geofence selectors.
    ``chained``: the source calculators' intervals over the frame (``chains.source_spans``)."""
    rows = frame.n
    codes = None
    geofence_index = None
    if spec.type == "calc":
        assert spec.calc_id is not None  # required by compile_calculator
        span = (chained or {}).get(spec.calc_id) or SourceSpan.of([])
        codes = span.membership(frame.timestamps)
        state = (codes >= 0).astype(np.int8)
    elif spec.type == "expression":
        assert spec.expression is not None  # compiled for every expression selector by compile_calculator
        vec = spec.expression.evaluate_frame(frame)
        err = np.zeros(rows, bool) if vec.err is None else vec.err
        if spec.method == "change":
            null = np.zeros(rows, bool) if vec.null is None else vec.null
            state = np.where(err, -1, np.where(null, 0, 1)).astype(np.int8)
            codes = _codes(vec, rows)
        else:
            state = np.where(err, -1, np.where(vec.truth(), 1, 0)).astype(np.int8)
    else:
        lat, lon, valid = frame.position()
        geofence_index = first_containing(spec.geofences, lat, lon, valid)
        state = np.where(~valid, -1, np.where(geofence_index >= 0, 1, 0)).astype(np.int8)
    if spec.options.get("invert") and spec.method != "change":
        state = np.where(state == 1, 0, np.where(state == 0, 1, state)).astype(np.int8)
    if spec.validate is not None:
        check = spec.validate.evaluate_frame(frame)
        valid = check.truth() if check.err is None else check.truth() & ~check.err
        state = np.where(valid, state, IGNORED).astype(np.int8)
    return state, codes, geofence_index


def _codes(vec, rows) -> np.ndarray:
    """An integer per message, equal where the values are equal."""
    if vec.kind == ColumnKind.NUM:
        _, inv = np.unique(vec.values, return_inverse=True)
        return inv.astype(np.int64)
    if vec.kind == ColumnKind.BOOL:
        return vec.values.astype(np.int64)
    table: dict = {}
    codes = np.empty(rows, dtype=np.int64)
    for i, item in enumerate(vec.values.tolist()):
        try:
            key = (type(item).__name__, item)
            hash(key)
        except TypeError:
            key = ("json", json.dumps(item, sort_keys=True))
        if isinstance(item, bool):
            key = (ColumnKind.BOOL, item)
        elif isinstance(item, int | float):
            key = (ColumnKind.NUM, float(item))
        codes[i] = table.setdefault(key, len(table))
    return codes


def _runs(on: np.ndarray, breaks: np.ndarray):
    rows = len(on)
    prev_on = np.zeros(rows, bool)
    prev_on[1:] = on[:-1]
    next_on = np.zeros(rows, bool)
    next_on[:-1] = on[1:]
    next_brk = np.zeros(rows, bool)
    next_brk[:-1] = breaks[1:]
    first = np.flatnonzero(on & (~prev_on | breaks))
    last = np.flatnonzero(on & (~next_on | next_brk))
    return first, last


def select(
    spec: SelectorSpec, frame: Frame, *, now: float | None, tz, chained: Mapping[int, SourceSpan] | None = None
) -> Runs:
    rows = frame.n
    if rows == 0:
        return _empty()
    stamps = frame.timestamps
    if spec.type == "datetime":
        split = spec.split
        keys = _period_keys(stamps, tz, split)
        breaks = np.zeros(rows, bool)
        breaks[1:] = keys[1:] != keys[:-1]
        first, last = _runs(np.ones(rows, bool), breaks)
        open_ = rows - 1 == last
        if now is not None and len(first) and split is not None:
            now_key = period_keys(np.array([float(now)]), tz, split)[0]
            if now_key != keys[-1]:
                open_ = np.zeros(len(first), bool)
        first, last = _merged(spec.options, first, last, rows)
        return Runs(first, last, open_)
    if spec.type == "inactive":
        gap = np.diff(stamps) > spec.delay_threshold
        first = np.flatnonzero(gap)
        last = first + 1
        open_ = np.zeros(len(first), bool)
        if now is not None and float(now) - stamps[-1] > spec.delay_threshold:
            # No message for longer than the threshold of wall clock: the device is inactive now,
            # in an open interval holding its newest message, which the next message closes.
            first = np.append(first, rows - 1)
            last = np.append(last, rows - 1)
            open_ = np.append(open_, True)
        return Runs(first, last, open_)

    options = spec.options
    state, codes, geofence_index = raw_state(spec, frame, chained)
    index = np.arange(rows)
    # A message the selector ignores, or an unknown one under ``merge_unknown``, takes the state
    # of the last message before it that counts.
    known = state != IGNORED
    if options["merge_unknown"]:
        known &= state != -1
    if known.all():
        source = index
        on = state == 1
    else:
        source = np.maximum.accumulate(np.where(known, index, -1))
        on = np.where(source >= 0, state[np.maximum(source, 0)] == 1, False)
    breaks = np.zeros(rows, bool)
    if codes is not None:
        code = codes[np.maximum(source, 0)]
        breaks[1:] = code[1:] != code[:-1]
    max_gap = options["max_messages_time_diff"]
    if max_gap > 0:
        breaks[1:] |= np.diff(stamps) > max_gap
    first, last = _runs(on, breaks)
    if options["min_active"] > 0 and len(first):
        keep = stamps[last] - stamps[first] >= options["min_active"]
        first, last = first[keep], last[keep]
    max_inactive = options["max_inactive"]
    if max_inactive > 0 and len(first) > 1:
        join = stamps[first[1:]] - stamps[last[:-1]] <= max_inactive
        # ``max_inactive`` joins the runs of two intervals of a ``calc`` selector's source too.
        if codes is not None and spec.type != "calc":
            code = codes[np.maximum(source, 0)]
            join &= code[first[1:]] == code[last[:-1]]
        starts = np.concatenate(([True], ~join))
        ends = np.concatenate((~join, [True]))
        first, last = first[starts], last[ends]
    open_ = rows - 1 == last
    if max_inactive > 0 and now is not None and float(now) - stamps[-1] > max_inactive:
        open_ = np.zeros(len(first), bool)
    if options.get("max_active", 0) > 0 and len(first):
        first, last, open_ = _cut_longer(stamps, first, last, open_, options["max_active"])
    first, last = _merged(options, first, last, rows)
    if options["min_duration"] > 0 and len(first):
        keep = stamps[last] - stamps[first] >= options["min_duration"]
        first, last, open_ = first[keep], last[keep], open_[keep]
    return Runs(first, last, open_, geofence_index)


def _period_keys(stamps: np.ndarray, tz, split: str | None) -> np.ndarray:
    """The period of each timestamp; one period for all without a split."""
    if split is None:
        return np.zeros(len(stamps), dtype=np.int64)
    return period_keys(stamps, tz, split)


def _merged(options: dict, first: np.ndarray, last: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs with the message before (``merge_message_before``) and after
    (``merge_message_after``) each joined to it."""
    if options.get("merge_message_before"):
        first = np.where(first > 0, first - 1, first)
    if options.get("merge_message_after"):
        last = np.minimum(last + 1, rows - 1)
    return first, last


def _cut_longer(
    stamps: np.ndarray, first: np.ndarray, last: np.ndarray, open_: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs longer than ``limit`` seconds (``max_active``) cut into pieces: a piece ends at the
    last message within ``limit`` of its first, and the next begins at the message after it.
    Only the last piece of an open run stays open."""
    pieces: tuple[list[int], list[int], list[bool]] = ([], [], [])
    for start, end, is_open in zip(first.tolist(), last.tolist(), open_.tolist(), strict=True):
        while True:
            beyond = int(np.searchsorted(stamps, stamps[start] + limit, "right"))
            if beyond > end:
                pieces[0].append(start)
                pieces[1].append(end)
                pieces[2].append(is_open)
                break
            pieces[0].append(start)
            pieces[1].append(beyond - 1)
            pieces[2].append(False)
            start = beyond
    return (
        np.array(pieces[0], dtype=np.int64),
        np.array(pieces[1], dtype=np.int64),
        np.array(pieces[2], dtype=bool),
    )


def intersect(left: Runs, right: Runs) -> tuple[Runs, np.ndarray, np.ndarray]:
    """Overlaps of two families of runs; also the index of the run of each that gave each."""
    if not len(left.first) or not len(right.first):
        empty = np.zeros(0, dtype=np.int64)
        return Runs(empty, empty, np.zeros(0, bool)), empty, empty
    reach = np.maximum.accumulate(right.last)
    lo = np.searchsorted(reach, left.first, "left")
    hi = np.searchsorted(right.first, left.last, "right")
    counts = np.maximum(hi - lo, 0)
    left_index = np.repeat(np.arange(len(left.first)), counts)
    offsets = np.cumsum(counts) - counts
    right_index = np.arange(counts.sum()) - np.repeat(offsets, counts) + np.repeat(lo, counts)
    first = np.maximum(left.first[left_index], right.first[right_index])
    last = np.minimum(left.last[left_index], right.last[right_index])
    keep = first <= last
    first, last, left_index, right_index = first[keep], last[keep], left_index[keep], right_index[keep]
    order = np.lexsort((last, first))
    first, last, left_index, right_index = first[order], last[order], left_index[order], right_index[order]
    if len(first) > 1:
        # Two runs of one selector sharing a message can give the same overlap twice.
        distinct = np.ones(len(first), bool)
        distinct[1:] = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
        first, last, left_index, right_index = (
            first[distinct],
            last[distinct],
            left_index[distinct],
            right_index[distinct],
        )
    open_ = left.open_[left_index] & right.open_[right_index]
    return Runs(first, last, open_), left_index, right_index


def clean_cuts(spec: SelectorSpec, frame: Frame, tz, chained: Mapping[int, SourceSpan] | None = None):
    """Where the windowed recalculation may cut this selector's message stream.

    For each index c (the cut between messages c-1 and c) returns:

    * ``strict[c]``: no interval of this selector spans the cut, none can join across it, and
      nothing before c changes what the selector does from c on;
    * ``transparent[c]``: an interval of this selector may span the cut, but cutting it there
      changes nothing it contributes from c on (no rule looks at a run's length or joins runs,
      and with ``merge_unknown`` the state at c-1 is known);
    * ``need[c]``: the earliest message whose state those answers rely on (its own previous
      message must be in the window too).

    Index 0 is never reported (the caller handles the start of the history).
    """
    rows = frame.n
    stamps = frame.timestamps
    strict = np.zeros(rows, bool)
    need = np.arange(rows) - 1
    if rows < 2:
        return strict, strict.copy(), need
    if spec.type == "datetime":
        if spec.options:
            # A merged message joins a period's interval to its neighbour's: no cut is clean.
            return strict, np.zeros(rows, bool), need
        keys = _period_keys(stamps, tz, spec.split)
        strict[1:] = keys[1:] != keys[:-1]
        transparent = np.ones(rows, bool)
        transparent[0] = False
        return strict, transparent, need
    if spec.type == "inactive":
        # Never transparent: the gap's interval holds the message before the gap only because of
        # the message after it, so a window ending inside a gap would lose that message's interval.
        strict[1:] = np.diff(stamps) <= spec.delay_threshold
        return strict, np.zeros(rows, bool), need
    options = spec.options
    state, codes, _ = raw_state(spec, frame, chained)
    # An ignored message is off only in the state it carries, which may come from before the
    # window: it never makes a cut clean.
    ignored = state == IGNORED
    off = ((state == 0) if options["merge_unknown"] else (state != 1)) & ~ignored
    strict[1:] = off[:-1]
    max_inactive = options["max_inactive"]
    if spec.type == "calc" and not (options["merge_message_before"] or options["merge_message_after"] or max_inactive):
        # Two messages of different source intervals are never one run (and nothing joins runs).
        strict[1:] |= codes[1:] != codes[:-1]
    if options["merge_message_before"] or options["merge_message_after"]:
        strict &= off
    if max_inactive > 0:
        earliest = np.searchsorted(stamps, stamps - max_inactive, "left")
        not_off = np.concatenate(([0], np.cumsum(~off)))
        # every message from j0 to c-1 is off
        strict &= (not_off[np.arange(rows)] - not_off[earliest]) == 0
        need = np.minimum(need, earliest)
    transparent = np.zeros(rows, bool)
    if not (
        options["min_active"] > 0 or options["min_duration"] > 0 or max_inactive > 0 or options.get("max_active", 0) > 0
    ):
        transparent[1:] = ((state[:-1] != -1) if options["merge_unknown"] else True) & ~ignored[:-1]
        if options["merge_message_before"]:
            # Message c-1 joins the run that message c starts: a window ending at the cut would
            # not see why. Only where c is off can it start nothing.
            transparent &= off
    return strict, transparent, need
