"""
Tests for the log daemon's fast path for a service's usual batch (L{LogWriter.write_service_access},
L{okws_twisted.logd.format.service_access_records}): it either declines a batch, having written
nothing, or writes byte for byte what the long way (C{json.loads}, L{LogWriter.write_batch})
writes for it: the same access.log and error.log, the same journal, the same watermark.

A service is untrusted: whatever it sends, the fast path must never write a line the long way
would not.  So the batches here are what services send (L{logchannel.access_text} of arbitrary
inputs) and those batches mutated (fields moved, duplicated or added, whitespace, other numbers,
escapes, truncation).
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.logd.daemon import LogWriter
from okws_twisted.logd.format import Sender, plain_strings, service_access_records
from okws_twisted.logd.journal import JOURNAL_NAME, parse
from okws_twisted.wire import logchannel
from okws_twisted.wire.logrecord import MAX_INT, MAX_TEXT
from tests.logd.test_daemon import site

SERVICE = Sender(name="hello.0", role="service", pid=1234, run="run1", launch=1, service="hello", index=0)
#: A service whose launcher-given name needs escaping in an unquoted field.
ODD_SERVICE = Sender(name="a b.3", role="service", pid=77, run="run1", launch=2, service="a b", index=None)
DISPATCHER = Sender(name="dispatcher", role="dispatcher", pid=99, run="run1")
ME = Sender(name="logd", role="logd", pid=7, run="run1")

#: 10 Oct 2000 13:55:36 UTC.
T = calendar.timegm((2000, 10, 10, 13, 55, 36, 0, 0, 0))

#: Characters of plain strings, the JSON structure's among them.
_PLAIN = " -/?=.:[]{},'%+~aZ09"
_plain_text = st.text(st.sampled_from(_PLAIN), max_size=16)
_any_text = st.text(max_size=8)
_text = st.one_of(_plain_text, _plain_text, _plain_text, _any_text)
_bytes = st.one_of(*[_plain_text.map(str.encode)] * 3, st.binary(max_size=8))


@st.composite
def access_values(draw: Any, plain: bool = False) -> logchannel.AccessValues:
    """A service's access record as L{logchannel.access_text} takes it (C{plain}: plain strings,
    usual numbers: a record the fast path reads)."""
    text = _plain_text if plain else _text
    raw = _plain_text.map(str.encode) if plain else _bytes
    started = draw(
        st.floats(T, T + 86400 * 400)
        if plain
        else st.one_of(st.floats(T, T + 86400 * 400), st.floats(-10.0, 1e13), st.just(0.0), st.just(1e12 - 1e-6))
    )
    now = started + draw(st.floats(-1.0, 30.0))
    status = draw(st.integers(100, 599) if plain else st.one_of(st.integers(100, 599), st.integers(-3, 10**19)))
    sent = draw(
        st.one_of(st.just(0), st.integers(0, 10**7))
        if plain
        else st.one_of(st.just(0), st.integers(0, 10**7), st.integers(-3, 2**63))
    )
    optional = st.one_of(st.none(), raw.map(lambda b: [b]))
    return (
        started, now, draw(text), draw(raw), draw(raw), draw(raw), status, sent, draw(text),
        draw(optional), draw(optional), draw(st.one_of(st.none(), text)), draw(st.one_of(st.none(), raw)),
    )


#: Records of other shapes (their keys in another order, other kinds).
_others = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("event"), "time": st.integers(0, 10**16), "level": st.just("info"), "text": _text}
    ),
    st.fixed_dictionaries(
        {"kind": st.just("access"), "status": st.integers(100, 599), "time": st.integers(0, 10**16)}
    ),
    st.fixed_dictionaries({"kind": st.just("dropped"), "count": st.integers(0, 5)}),
)

#: What a mutation may insert.
_SNIPPETS = [
    " ", "\n", ",", ":", "-", "0", "9", '"', "{", "}", "[", "]", "\\", "\\n", "\\u0041", '\\"', "\x7f", "\x00",
    "\t", "\u00e9", '"reason":"x",', '"service":"x",', '"kind":"event",', '"status":500,', ',"host":"h"',
    ',"tls":"t"', ',"referer":"r"', ',"user_agent":""', ',"evil":1', ',{"kind":"access","status":200}', ",[]",
]
#: What a mutation may put in a number's place.
_NUMBERS = [
    "-1", "-0", "0", "00", "01", "1.0", "1e3", "2E2", "true", "null", '"200"', "999999999999999999",
    "1000000000000000000", str(MAX_INT), str(MAX_INT + 1), str(-MAX_INT - 1), "9" * 30, "404", "0.0",
]


@st.composite
def mutated(draw: Any) -> bytes:
    """A usual batch with one to three mutations."""
    text = logchannel.encode_records(draw(st.lists(access_values(plain=True), min_size=1, max_size=4))).decode()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "copy", "reorder", "number", "truncate"]))
        n = len(text)
        if op == "insert":
            i = draw(st.integers(0, n))
            text = text[:i] + draw(st.sampled_from(_SNIPPETS)) + text[i:]
        elif op == "delete":
            i = draw(st.integers(0, n))
            text = text[:i] + text[draw(st.integers(i, min(n, i + 16))):]
        elif op == "copy":  # a field or a piece of one, again elsewhere
            i = draw(st.integers(0, n))
            span = text[i:draw(st.integers(i, min(n, i + 48)))]
            k = draw(st.integers(0, n))
            text = text[:k] + span + text[k:]
        elif op == "truncate":
            text = text[:draw(st.integers(0, n))]
        elif op == "reorder":
            try:
                records = json.loads(text)
            except ValueError:
                continue
            if not isinstance(records, list) or not records or not isinstance(records[0], dict):
                continue
            r = draw(st.integers(0, len(records) - 1))
            if isinstance(records[r], dict):
                order = draw(st.permutations(list(records[r])))
                records[r] = {key: records[r][key] for key in order}
            text = json.dumps(records, separators=(",", ":"), ensure_ascii=False)
        else:
            numbers = list(re.finditer(r"(?<=:)[0-9]+", text))
            if numbers:
                m = draw(st.sampled_from(numbers))
                text = text[:m.start()] + draw(st.sampled_from(_NUMBERS)) + text[m.end():]
    return text.encode("utf-8")


class Outcome:
    """A L{LogWriter} in a directory of its own, and what it wrote."""

    def __init__(self, **keys: Any) -> None:
        self.dir = tempfile.mkdtemp(prefix="okws-fastpath-")
        self.writer = LogWriter(site(self.dir, **keys), ME, MemoryReactorClock(), current_run="run1")
        self.writer.start()

    def close(self) -> None:
        self.writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def files(self) -> dict[str, Any]:
        """Every log file's bytes, the journal's entries (their inode and device left out: they are
        the directory's) and the watermarks."""
        out: dict[str, Any] = {"watermarks": dict(self.writer.watermarks)}
        for name in sorted(os.listdir(self.dir)):
            with open(os.path.join(self.dir, name), "rb") as f:
                data = f.read()
            if name == JOURNAL_NAME:
                entries, bad = parse(data)
                writes = [tuple(dataclasses.replace(w, dev=0, ino=0) for w in e.writes) for e in entries]
                out[name] = ([dataclasses.replace(e, writes=w) for e, w in zip(entries, writes)], bad)
            else:
                out[name] = data
        return out


def long_way(writer: LogWriter, sender: Sender, first: int, payload: bytes) -> int | None:
    """What the daemon did with every batch before the fast path (L{None}: a bad message)."""
    try:
        records = json.loads(payload.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(records, list):
        return None
    return writer.write_batch(sender, first, records, plain_strings(payload))


class SameLinesTests(SynchronousTestCase):
    """Whatever a service sends, the fast path writes what the long way writes, or declines."""

    def compare(self, sender: Sender, batches: list[tuple[int, bytes]], **keys: Any) -> list[bool]:
        """Write C{batches} (first number, payload) the long way in one directory and the daemon's way
        (the fast path, the long way if it declines) in another; the files must be the same.
        Returns, per batch, whether the fast path took it."""
        slow, fast = Outcome(**keys), Outcome(**keys)
        self.addCleanup(slow.close)
        self.addCleanup(fast.close)
        taken = []
        for first, payload in batches:
            before = fast.files()
            mark = fast.writer.write_service_access(sender, first, payload)
            taken.append(mark is not None)
            if mark is None:
                self.assertEqual(fast.files(), before, "the fast path declined and wrote something")
                mark = long_way(fast.writer, sender, first, payload)
            expected = long_way(slow.writer, sender, first, payload)
            if taken[-1]:
                self.assertIsNotNone(expected, "the fast path took a message the long way refuses")
            self.assertEqual(mark, expected)
            self.assertEqual(fast.files(), slow.files(), payload)
        return taken

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.one_of(access_values(), access_values(plain=True)), min_size=1, max_size=6),
        st.sampled_from([SERVICE, ODD_SERVICE]),
        st.integers(1, 8),
    )
    def test_servicesBatches(self, records: list[logchannel.AccessValues], sender: Sender, again: int) -> None:
        """Records as a service writes them, from any inputs; the batch sent again from C{again}
        (a resend after a reconnect: what the files hold is skipped)."""
        payload = logchannel.encode_records(records)  # type: ignore[arg-type]
        self.compare(sender, [(1, payload), (again, payload)])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(access_values(plain=True), min_size=1, max_size=6),
        st.sampled_from([SERVICE, ODD_SERVICE]),
        st.integers(1, 8),
    )
    def test_usualBatchesTaken(self, records: list[logchannel.AccessValues], sender: Sender, again: int) -> None:
        """A service's usual batch (plain strings, usual numbers) is taken, and written as the long way does."""
        payload = logchannel.encode_records(records)  # type: ignore[arg-type]
        self.assertEqual(self.compare(sender, [(1, payload), (again, payload)]), [True, True])

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(), st.sampled_from([SERVICE, ODD_SERVICE]))
    def test_mutatedBatches(self, payload: bytes, sender: Sender) -> None:
        self.compare(sender, [(1, payload)])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.one_of(access_values(plain=True), _others), min_size=1, max_size=5))
    def test_otherRecordsDeclined(self, records: list[Any]) -> None:
        """A batch with any other record (another kind, another field order) goes the long way."""
        assume(any(isinstance(r, dict) for r in records))
        payload = logchannel.encode_records(records)
        self.assertEqual(self.compare(SERVICE, [(1, payload)]), [False])

    def test_edges(self) -> None:
        """Edges of the numbers and strings, each taken or declined as the long way needs."""
        usual = (T + 0.5, T + 0.75, "127.0.0.1", b"GET", b"/", b"HTTP/1.1", 200, 10, "r", None, None, None, None)

        def batch(**change: Any) -> bytes:
            names = ("started", "now", "client", "method", "uri", "proto", "status", "sent", "request_id",
                     "referer", "agent", "tls", "host")
            values = dict(zip(names, usual)) | change
            return logchannel.encode_records([tuple(values[n] for n in names)])  # type: ignore[list-item]

        long = "x" * MAX_TEXT
        uri = len("GET  HTTP/1.1")
        cases = [
            (batch(), True),
            (batch(sent=0, status=404, client=""), True),
            (batch(client="a b", request_id=" ", status=503, agent=[b""], referer=[b""], host=b"", tls=""), True),
            (batch(started=0.0, now=0.0), True),
            (batch(started=0.5, now=0.5), True),  # under a second: no whole seconds in the digits
            (batch(started=999999.999999, now=1e6), True),
            (batch(status=10**17), True),
            (batch(status=10**18), False),
            (batch(status=MAX_INT + 1), False),  # the long way refuses the field, drops the record, says so
            (batch(started=(MAX_INT + 1) / 1e6), False),
            (batch(sent=-1), False),
            (batch(status=99), True),
            (batch(status=1000), True),
            (batch(uri=long[uri:].encode()), True),  # the request line: exactly MAX_TEXT characters
            (batch(uri=long[uri - 1:].encode()), False),  # one over: the long way cuts it and says so
            (batch(request_id=long), True),
            (batch(request_id=long + "x"), False),
            (batch(agent=[b"a\\b"]), False),
            (batch(agent=[b"a\x7fb"]), False),
            (batch(agent=[b"a\nb"]), False),
            (batch(client="caf\u00e9"), False),
            (b"[]", False),
            (b"", False),
            (batch()[:-1], False),
            (batch()[:-1] + b",]", False),
            (batch()[:-1] + b"] ", False),
            (batch()[:-1] + b"]]", False),
            (b" " + batch(), False),
            (batch().replace(b"]", b",") + batch()[1:], True),
            (batch().replace(b"}]", b"}]" + batch()[1:]), False),  # [record][record]: not one array
        ]
        for n, (payload, taken) in enumerate(cases):
            self.assertEqual(self.compare(SERVICE, [(1 + n, payload)]), [taken], payload[:120])

    def test_othersDeclined(self) -> None:
        """A dispatcher's batch, or other log settings: the long way, for the same usual batch."""
        record = (T, T + 1, "::1", b"GET", b"/", b"HTTP/1.1", 500, 0, "r", None, None, None, None)
        payload = logchannel.encode_records([record])  # type: ignore[list-item]
        self.assertIsNotNone(service_access_records(payload.decode()))
        self.assertEqual(self.compare(SERVICE, [(1, payload)]), [True])
        self.assertEqual(self.compare(DISPATCHER, [(1, payload)]), [False])
        others: list[dict[str, Any]] = [
            {"access_log_json": True}, {"access_log": False}, {"access_log_fields": ("client", "status", "host")}
        ]
        for keys in others:
            self.assertEqual(self.compare(SERVICE, [(1, payload)], **keys), [False], keys)
