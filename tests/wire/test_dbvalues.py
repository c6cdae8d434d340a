"""The database channel's value codec: every carried type round-trips exactly; others are refused."""

import datetime
import decimal
from zoneinfo import ZoneInfo

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire import dbvalues

D, DT = datetime.date, datetime.datetime
SAMPLES = [
    None, True, False, 0, 1, -1, 2**63, -(2**80), 0.1, -0.0, 1e308, float("inf"), float("-inf"),
    "", "caf\u00e9 \U0001f600 \x00 '; DROP TABLE t;--", b"", b"\x00\xff" * 10,
    decimal.Decimal("1.10"), decimal.Decimal("-0.000"), decimal.Decimal("12345678901234567890.123456789"),
    decimal.Decimal("NaN"), decimal.Decimal("1E+3"),
    D(2024, 2, 29), D(1, 1, 1), DT(2024, 5, 1, 12, 0, 0, 1),
    DT(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
    DT(2024, 5, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
    DT(2024, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris")),
]


def same(a: object, b: object) -> bool:
    """Equal, same type, and for the types where equality hides a difference, the same text."""
    if type(a) is not type(b):
        return False
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, DT):
        return a == b and a.utcoffset() == b.utcoffset() and (a.tzinfo is None) == (b.tzinfo is None)
    return a == b


class RoundTrip(SynchronousTestCase):
    def test_every_type(self) -> None:
        for value in SAMPLES:
            back = dbvalues.decode_params(dbvalues.loads(dbvalues.dumps(dbvalues.check_params({"v": value}))))["v"]
            self.assertTrue(same(value, back), f"{value!r} came back as {back!r}")

    def test_rows(self) -> None:
        """A column named like a tag is only a name: rows are lists, never objects."""
        rows = dbvalues.decode_rows(dbvalues.loads(dbvalues.dumps(dbvalues.encode_rows(["$b", "x"], [[b"1", 2]]))))
        self.assertEqual(rows, [{"$b": b"1", "x": 2}])

    def test_refused_before_sending(self) -> None:
        for bad in ([1], {"a": 1}, {1}, datetime.time(1), object(), bytearray(b"x"), type("S", (str,), {})("x")):
            with self.assertRaises(TypeError) as cm:
                dbvalues.check_params({"p": bad})
            self.assertIn("parameter 'p'", str(cm.exception))

    def test_malformed_from_peer(self) -> None:
        for raw in ([1], {"b": "!!"}, {"d": "x"}, {"T": "yesterday"}, {"x": "1"}, {"b": "AA==", "d": "1"}, {"f": "1.0"}):
            with self.assertRaises(ValueError):
                dbvalues.from_wire(raw)
        with self.assertRaises(ValueError):
            dbvalues.loads(b'{"v": NaN}')
