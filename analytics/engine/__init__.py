"""The analytics engine: messages + calculator -> intervals (DESIGN section 7). No Django here.

Public interface (the rest of the platform calls only these):

``calculate(messages, calculator, *, now=None, sources=None) -> IntervalList``
    Full calculation. ``messages``: a list of message dicts (``timestamp`` float seconds, flat
    dotted keys) or a ``Messages`` (columnar: ``Messages.from_dicts``/``Messages.from_columns``),
    sorted by timestamp. ``calculator``: a configuration dict or a compiled ``Calculator``.
    Returns interval dicts ``{"id", "begin", "end", "duration", <counters>}`` oldest first (no
    ``timestamp``: the storage layer stamps it); the list's ``active_id`` is the id of the active
    interval or ``None``. ``now`` (unix seconds) lets ``max_inactive`` and ``datetime`` periods
    close the last interval by wall clock. ``sources``: for a calculator that chains others (the
    ``calc`` selector, the ``calculator`` counter, ``messages_source`` of type ``calculator``),
    each source calculator's intervals of the device by id (a list or an ``IntervalReader``);
    ``Calculator.references`` lists what it chains (path, id), ``Calculator.chained`` whether it
    does. ``intervals_as_messages``/``messages_of`` turn a source's intervals into the messages
    of a ``messages_source`` calculator.

``recalculate(*, calculator, read_messages, read_intervals, interval_before, dirty_begin,
dirty_end, now, frozen_before=None, messages_begin=None, newest=None, tail=None, sources=None) -> Diff``
    Windowed recalculation after the messages changed in ``[dirty_begin, dirty_end]``; returns
    ``Diff(created, updated, deleted, active_id, reached_end, window, messages_read)``. The
    docstring of ``recalculate`` is the contract. ``MemoryStore`` implements the read callables
    in memory and applies diffs.

``active_deadline(calculator, *, newest) -> float | None``
    When the wall clock closes an active interval whose newest message is at ``newest``
    (``max_inactive``, end of a ``datetime`` period); the sweep then calls ``recalculate``.
``clock_deadline(calculator, *, newest, active, now) -> float | None``
    The next moment the wall clock alone changes the intervals: the open one closing, or an
    ``inactive`` selector's interval opening ``delay_threshold`` after the newest message.

``validate_calculator(config) -> list[Problem]``
    Every problem, each with ``path`` (``selectors[0].expression``) and ``message``
    (``unexpected ')' at 14``); empty when valid.
``compile_calculator(config) -> Calculator`` / ``normalize_calculator(config) -> dict``
    The compiled calculator to reuse across calls / the configuration with DESIGN 7.2 defaults
    filled in. Both raise ``CalculatorError`` (with ``.problems``) when invalid.
    ``Calculator.parameters``: the message parameters (dotted names) the calculator reads, as a
    ``frozenset`` (``timestamp`` is implied), or ``None`` when that cannot be known; messages
    holding only those give the same intervals.

``compile_expression(text, *, timezone="UTC", geofences=()) -> CompiledExpression``
    ``.parameters`` (the message parameters it reads); ``.evaluate(message, previous=None)`` returns the value or raises ``EvaluationError``;
    ``.evaluate_raw`` returns the value or the ``ERROR`` marker; ``.matches(message,
    previous=None)`` is true only when the value is true (errors and null are not). Works on
    message dicts and on interval dicts (``begin``, ``duration``, counter names). Raises
    ``ExpressionError`` (``.position``, 1-based; ``.reason``) when the text does not compile.
"""

from .calculate import IntervalList, active_deadline, calculate, clock_deadline, interval_id
from .calculator import Calculator, compile_calculator, normalize_calculator, validate_calculator
from .chains import IntervalReader, ListedIntervals, intervals_as_messages, message_time, messages_of
from .errors import CalculatorError, EngineError, EvaluationError, ExpressionError, Problem
from .expressions import CompiledExpression, compile_expression
from .messages import Messages
from .recalculate import Diff, MemoryStore, Tail, recalculate, same_interval
from .values import ERROR

__all__ = [
    "ERROR",
    "Calculator",
    "CalculatorError",
    "CompiledExpression",
    "Diff",
    "EngineError",
    "EvaluationError",
    "ExpressionError",
    "IntervalList",
    "IntervalReader",
    "ListedIntervals",
    "MemoryStore",
    "Messages",
    "Problem",
    "Tail",
    "active_deadline",
    "calculate",
    "clock_deadline",
    "compile_calculator",
    "compile_expression",
    "interval_id",
    "intervals_as_messages",
    "message_time",
    "messages_of",
    "normalize_calculator",
    "recalculate",
    "same_interval",
    "validate_calculator",
]
