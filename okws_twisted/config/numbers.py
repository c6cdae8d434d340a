# -*- test-case-name: tests.test_config -*-
"""How a numeric config key is written and which values make sense (sizes, counts, seconds).

Shared by every section's keys, so each number reads and fails the same way.  Pure: stdlib only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from okws_twisted.config.errors import _FieldError


@dataclass(frozen=True)
class _Number:
    """How one numeric key is written and which values make sense."""

    kind: type  # int or float
    minimum: float
    unit: str
    maximum: float | None = None
    exclusive: bool = False  # True: the value must be strictly above C{minimum}

    def expected(self) -> str:
        noun = "a whole number of" if self.kind is int else "a number of"
        if self.maximum is not None:
            return f"{noun} {self.unit} from {self.minimum:g} to {self.maximum:g}"
        if self.exclusive:
            return f"{noun} {self.unit} above {self.minimum:g}"
        return f"{noun} {self.unit}, {self.minimum:g} or more"

    def check(self, value: object, written: str | None = None) -> str | None:
        """Return why C{value} is wrong (quoting C{written}, the ini text, if given), or L{None}."""
        shown = repr(written) if written is not None else repr(value)
        wrong = f"expected {self.expected()}, got {shown}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return wrong
        if self.kind is int and not isinstance(value, int):
            return wrong
        if not math.isfinite(value):
            return wrong
        too_low = value <= self.minimum if self.exclusive else value < self.minimum
        if too_low or (self.maximum is not None and value > self.maximum):
            return wrong
        return None

    def convert(self, text: str) -> int | float:
        """Read the ini spelling: plain digits (C{_} separators allowed), a point for floats."""
        pattern = _INT_TEXT if self.kind is int else _FLOAT_TEXT
        if not pattern.fullmatch(text):
            raise _FieldError(None, f"expected {self.expected()}, got {text!r}")
        return self.kind(text)


_INT_TEXT = re.compile(r"[0-9]+(?:_[0-9]+)*")
_FLOAT_TEXT = re.compile(r"[0-9]+(?:_[0-9]+)*(?:\.[0-9]*)?|\.[0-9]+")

_SECONDS_POSITIVE = _Number(float, 0, "seconds", exclusive=True)
_SECONDS_OR_ZERO = _Number(float, 0, "seconds")
