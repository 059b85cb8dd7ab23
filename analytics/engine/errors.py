"""Error types of the engine: parse errors with a position, configuration problems with a path."""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ExpressionError(EngineError):
    """An expression that does not parse or does not compile.

    ``position`` is the 1-based character position of the problem in the expression text (or
    ``None`` when the problem is not at one place); ``reason`` is the message without the prefix.
    """

    def __init__(self, reason: str, position: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.position = position


class EvaluationError(EngineError):
    """Raised by ``CompiledExpression.evaluate`` when the expression errors on a message
    (missing bare parameter, wrong types, division by zero)."""


@dataclass(frozen=True)
class Problem:
    """One problem of a calculator configuration: ``path`` like ``selectors[0].expression`` and a
    human ``message`` like ``unexpected ')' at 14``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CalculatorError(EngineError):
    """A calculator configuration with problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems
