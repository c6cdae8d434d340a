# -*- test-case-name: tests.wire.test_dbvalues -*-
"""
The values a database call carries, on the wire between a service and its database proxy.

A service's parameters and the proxy's results cross a
L{okws_twisted.wire.channel.MessageChannel} as JSON.  JSON alone loses
types (bytes, Decimal, dates) and Python's own C{json} keeps the rest
(C{True} stays C{True}, a big int stays exact, a float round-trips through
C{repr}), so only the types JSON lacks are tagged, as a one-key object::

    None, bool, int, float, str   -> themselves
    bytes                          -> {"b": "<base64>"}
    decimal.Decimal                -> {"d": "1.10"}           (str: keeps scale, sign, NaN)
    datetime.date                  -> {"D": "2024-05-01"}
    datetime.datetime              -> {"T": "2024-05-01T12:00:00.000001+02:00"}   (naive: no offset)

No value is ever a JSON object or array, so any object in a value's place
is a tag and the tags cannot collide with data.  Rows travel as a column
list plus value lists (L{encode_rows}), never as objects keyed by column
name, for the same reason and because it is smaller.

An aware datetime comes back aware with the same UTC offset (a C{ZoneInfo}
becomes a fixed C{timezone}; they compare equal).  Anything else (a list, a
dict, a set, a C{time}, a subclass the author made) is refused with
C{TypeError} on the sending side, before anything is sent.  Pure: no I/O (the JSON helpers it
shares with L{okws_twisted.wire.channel} are too).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from okws_twisted.wire.channel import compact_encoder, fast_decoder

#: What may cross; exact types only (a bool is checked before int: it is one).
Value = Union[None, bool, int, float, str, bytes, decimal.Decimal, datetime.date, datetime.datetime]

_PLAIN = (type(None), bool, int, float, str)

#: Longest text a tagged value may carry when decoding (a Decimal of 1000
#: digits is already absurd; the frame limit bounds the rest).
_MAX_TAG_TEXT = 4096


class ValueRefused(TypeError):
    """A value of a type the database channel does not carry."""


def to_wire(value: object) -> object:
    """One value in its JSON form; raise L{ValueRefused} for any other type."""
    kind = type(value)
    if kind in _PLAIN:
        if kind is float and not math.isfinite(value):  # type: ignore[arg-type]
            # json writes NaN/Infinity (not JSON); tag them so the text stays JSON.
            return {"f": repr(value)}
        return value
    if kind is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}  # type: ignore[arg-type]
    if kind is decimal.Decimal:
        return {"d": str(value)}
    if kind is datetime.datetime:
        return {"T": value.isoformat()}  # type: ignore[union-attr]
    if kind is datetime.date:
        return {"D": value.isoformat()}  # type: ignore[union-attr]
    raise ValueRefused(
        f"a database value must be None, bool, int, float, str, bytes, Decimal, date or datetime, not {kind.__name__}"
    )


def from_wire(value: object) -> Value:
    """The value a JSON form stands for; raise C{ValueError} for anything malformed."""
    if value is None or type(value) in (bool, int, str):
        return value  # type: ignore[return-value]
    if type(value) is float:
        return value  # type: ignore[return-value]
    if type(value) is dict and len(value) == 1:  # type: ignore[arg-type]
        ((tag, text),) = value.items()  # type: ignore[union-attr]
        if type(text) is not str or (len(text) > _MAX_TAG_TEXT and tag != "b"):
            raise ValueError(f"bad tagged value {tag!r}")
        try:
            if tag == "b":
                return base64.b64decode(text, validate=True)
            if tag == "d":
                return decimal.Decimal(text)
            if tag == "T":
                return datetime.datetime.fromisoformat(text)
            if tag == "D":
                return datetime.date.fromisoformat(text)
            if tag == "f" and text in ("nan", "inf", "-inf"):
                return float(text)
        except (ValueError, decimal.InvalidOperation, binascii.Error) as e:
            raise ValueError(f"bad {tag!r} value: {e}") from None
    raise ValueError(f"not a database value: {type(value).__name__}")


def check_params(params: Mapping[str, object]) -> dict[str, object]:
    """Parameters in wire form, checked in the service before anything is sent."""
    out: dict[str, object] = {}
    for name, value in params.items():
        try:
            out[name] = to_wire(value)
        except ValueRefused as e:
            raise ValueRefused(f"parameter {name!r}: {e}") from None
    return out


def decode_params(raw: object) -> dict[str, Value]:
    """Parameters from the wire (proxy side); C{ValueError} if malformed."""
    if type(raw) is not dict:
        raise ValueError("parameters are not an object")
    return {name: from_wire(v) for name, v in raw.items()}  # type: ignore[union-attr]


def encode_rows(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> dict[str, object]:
    """A result set: column names once, then each row's values in order."""
    return {"c": list(columns), "r": [[to_wire(v) for v in row] for row in rows]}


def decode_rows(raw: object) -> list[dict[str, Value]]:
    """The rows of L{encode_rows} as the author sees them: dicts, column name -> value."""
    if type(raw) is not dict or type(raw.get("c")) is not list or type(raw.get("r")) is not list:  # type: ignore[union-attr]
        raise ValueError("bad row set")
    columns = raw["c"]  # type: ignore[index]
    if not all(type(c) is str for c in columns):
        raise ValueError("bad column names")
    out = []
    for row in raw["r"]:  # type: ignore[index]
        if type(row) is not list or len(row) != len(columns):
            raise ValueError("bad row")
        out.append(dict(zip(columns, (from_wire(v) for v in row))))
    return out


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# Built once: json.dumps/json.loads with any option build a new encoder or decoder per call,
# which cost more than the encoding of a small call itself; and used without their Python
# wrappers (the channel's helpers: same output, same errors).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
#: C{dumps(obj) -> bytes}: compact JSON (UTF-8); NaN/Infinity never appear bare (L{to_wire} tags
#: them).  (The helper itself, not a function calling it: one call fewer.)
dumps: Callable[[object], bytes] = compact_encoder(
    _ENCODER, [7, "caf\u00e9 \"q\" \\ \n \u2028", {"b": {"b": "AA=="}, "n": None}, True, 1.5, -3], "utf-8"
)
#: C{loads(data: bytes) -> Any}: JSON from a peer (UTF-8); bare NaN/Infinity are refused,
#: duplicates keep the last.  (The helper itself, not a function calling it: one call fewer.)
loads: Callable[[bytes], Any] = fast_decoder(_DECODER)
