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

    @property
    def is_size(self) -> bool:
        """Sizes in bytes may be written with a K, M or G suffix (KiB, MiB, GiB)."""
        return self.unit == "bytes"

    def expected(self) -> str:
        noun = "a whole number of" if self.kind is int else "a number of"
        unit = f"{self.unit} (or K, M, G)" if self.is_size else self.unit
        low, high = self._shown(self.minimum), self._shown(self.maximum)
        if self.maximum is not None:
            return f"{noun} {unit} from {low} to {high}"
        if self.exclusive:
            return f"{noun} {unit} above {low}"
        return f"{noun} {unit}, {low} or more"

    def _shown(self, value: float | None) -> str:
        if value is None:
            return ""
        if self.is_size and value:
            for suffix, scale in reversed(_SIZE_SUFFIXES.items()):
                if value % scale == 0:
                    return f"{value // scale:g}{suffix}"
        return f"{value:g}"

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
        """Read the ini spelling: plain digits (C{_} separators allowed), a point for floats,
        a K, M or G suffix for sizes."""
        if self.is_size:
            match = _SIZE_TEXT.fullmatch(text)
            if match:
                return int(match.group(1)) * _SIZE_SUFFIXES.get(match.group(2).upper(), 1)
        pattern = _INT_TEXT if self.kind is int else _FLOAT_TEXT
        if not pattern.fullmatch(text):
            raise _FieldError(None, f"expected {self.expected()}, got {text!r}")
        return self.kind(text)


_INT_TEXT = re.compile(r"[0-9]+(?:_[0-9]+)*")
_SIZE_TEXT = re.compile(r"([0-9]+(?:_[0-9]+)*) ?([KMGkmg]?)")
_SIZE_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_FLOAT_TEXT = re.compile(r"[0-9]+(?:_[0-9]+)*(?:\.[0-9]*)?|\.[0-9]+")

_SECONDS_POSITIVE = _Number(float, 0, "seconds", exclusive=True)
_SECONDS_OR_ZERO = _Number(float, 0, "seconds")
