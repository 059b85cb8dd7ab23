"""What validating a calculator configuration shares: the problem collector with its typed field
readers (``Checker``), and the scope every expression of a calculator is compiled with.

The calculator's own fields and its selectors are checked in ``calculator``; each counter type
checks its fields in its class (``counters``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .errors import ExpressionError, Problem
from .expressions import CompiledExpression
from .geo import Geofence


def is_finite_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Scope:
    """What every expression of a calculator is compiled with."""

    tz: str
    geofences: Sequence[Geofence]
    # Whether a geofence selector exists (its geofences may be the assigned ones, none yet).
    geofence_selector: bool = False
    # What ``device.metadata.x`` and ``calculator.metadata.x`` read.
    metadata: Mapping[str, Any] = field(default_factory=dict)


class Checker:
    """Collects the problems of a configuration, each with its path; its readers return the
    field's value, or ``default`` after noting a problem."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def number(
        self,
        obj: dict,
        key: str,
        path: str,
        *,
        default=None,
        required=False,
        minimum=0.0,
        positive=False,
        integer=False,
    ):
        if key not in obj or obj[key] is None:
            if required:
                self.add(f"{path}.{key}" if path else key, "missing field")
            return default
        value = obj[key]
        where = f"{path}.{key}" if path else key
        if not is_finite_number(value) or (integer and float(value) != int(value)):
            self.add(where, "must be an integer" if integer else "must be a number")
            return default
        if positive and value <= 0:
            self.add(where, "must be greater than 0")
            return default
        if minimum is not None and value < minimum:
            self.add(where, f"must be at least {minimum:g}")
            return default
        return int(value) if integer else value

    def boolean(self, obj: dict, key: str, path: str, default=False):
        if key not in obj or obj[key] is None:
            return default
        if not isinstance(obj[key], bool):
            self.add(f"{path}.{key}", "must be true or false")
            return default
        return obj[key]

    def _given(self, obj: dict, key: str, where: str, required: bool) -> bool:
        """Whether ``obj`` gives ``key`` (not null); a required one that it does not is a problem."""
        if key not in obj or obj[key] is None:
            if required:
                self.add(where, "missing field")
            return False
        return True

    def string(self, obj: dict, key: str, path: str, *, required=False, default=None, choices=None):
        where = f"{path}.{key}" if path else key
        if not self._given(obj, key, where, required):
            return default
        value = obj[key]
        if not isinstance(value, str) or (required and not value):
            self.add(where, "must be a non-empty string" if required else "must be a string")
            return default
        if choices is not None and value not in choices:
            self.add(where, f"must be one of {', '.join(choices)}")
            return default
        return value

    def calc_id(self, obj: dict, key: str, path: str) -> int | None:
        """A reference to another calculator (``chains``): a positive integer id. Whether it
        exists, is the same account's and closes no cycle is the platform's check, with the
        stored calculators."""
        where = f"{path}.{key}" if path else key
        if not self._given(obj, key, where, True):
            return None
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
            self.add(where, "must be a calculator id (a positive integer)")
            return None
        return value

    def unknown(self, obj: dict, allowed, path: str) -> None:
        for key in obj:
            if key not in allowed:
                self.add(f"{path}.{key}" if path else str(key), "unknown field")

    def expression(self, obj: dict, key: str, path: str, *, scope: Scope, required=False):
        where = f"{path}.{key}" if path else key
        if not self._given(obj, key, where, required):
            return None
        text = obj[key]
        if not isinstance(text, str):
            self.add(where, "must be a string")
            return None
        try:
            return CompiledExpression(text, timezone=scope.tz, geofences=scope.geofences, metadata=scope.metadata)
        except ExpressionError as error:
            self.add(where, error.reason)
            return None


def check_point(checker: Checker, point: Any, path: str, *, known_only: bool = False) -> dict | None:
    """A point ``{"lat", "lon"}`` in degrees: ``{"lat", "lon"}``, or ``None`` with its problems
    added at ``path`` (``known_only``: other keys are problems too)."""
    if not isinstance(point, dict):
        checker.add(path, "must be an object with lat and lon")
        return None
    if known_only:
        checker.unknown(point, ("lat", "lon"), path)
    ok = True
    for key, limit in (("lat", 90), ("lon", 180)):
        value = point.get(key)
        if not is_finite_number(value):
            checker.add(f"{path}.{key}", "missing field" if value is None else "must be a number")
            ok = False
        elif abs(value) > limit:
            checker.add(f"{path}.{key}", f"must be between -{limit} and {limit}")
            ok = False
    return {"lat": point["lat"], "lon": point["lon"]} if ok else None
