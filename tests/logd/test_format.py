"""
Tests for L{okws_twisted.logd.format}: what the log daemon accepts from a sender and the lines it writes.
"""

from __future__ import annotations

import calendar
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ACCESS_FIELDS, COMBINED, parse_access_fields
from okws_twisted.logd.format import (
    Sender,
    TimeFormats,
    access_json,
    access_line,
    check,
    dropped_line,
    escape,
    escape_bare,
    escape_text,
    event_lines,
    plain_strings,
    problem_line,
    status_line,
    usual_access,
)
from okws_twisted.wire import logchannel
from okws_twisted.wire.logrecord import ACCESS_RECORD, MAX_TEXT

SERVICE = Sender(name="hello.0", role="service", pid=1234, run="r1", launch=2, service="hello", index=0)
DISPATCHER = Sender(name="dispatcher", role="dispatcher", pid=99, run="r1")
LAUNCHER = Sender(name="launcher", role="launcher", pid=1, run="r1")
LOGD = Sender(name="logd", role="logd", pid=7, run="r1")

#: 10 Oct 2000 13:55:36 UTC, plus 123456 us.
T = calendar.timegm((2000, 10, 10, 13, 55, 36, 0, 0, 0)) * 1_000_000 + 123456


def access(**fields: object) -> dict[str, object]:
    record: dict[str, object] = {
        "kind": "access",
        "time": T,
        "client": "127.0.0.1",
        "request": "GET /hello?id=1 HTTP/1.1",
        "status": 200,
        "bytes": 2326,
        "referer": "http://example.com/start.html",
        "user_agent": "Mozilla/4.08",
        "request_id": "abc-1",
        "response_time": 1520,
    }
    record.update(fields)
    return record


def checked(record: object, sender: Sender = SERVICE) -> dict[str, object]:
    result, problems = check(record, sender)
    assert result is not None, problems
    return result.fields


class SenderTests(SynchronousTestCase):
    def test_fromMeta(self) -> None:
        meta = {"k": "peer", "channel": "log", "name": "hello.0", "role": "service", "pid": 1234,
                "launch": 2, "run": "r1", "service": "hello", "index": 0}
        self.assertEqual(Sender.from_meta(meta), SERVICE)

    def test_keyIsPerLaunchAndRun(self) -> None:
        """A relaunched sender (new pid, next launch) or a new launcher run is a new sender."""
        keys = {
            SERVICE.key,
            Sender("hello.0", "service", 1234, run="r1", launch=3).key,
            Sender("hello.0", "service", 1234, run="r2", launch=2).key,
            Sender("hello.0", "service", 1235, run="r1", launch=2).key,
        }
        self.assertEqual(len(keys), 4)
        self.assertTrue(SERVICE.key.startswith("r1/"))

    def test_badMeta(self) -> None:
        for meta in ({}, {"name": "x", "role": "service"}, {"name": "", "role": "s", "pid": 1},
                     {"name": "x", "role": "s", "pid": True}):
            self.assertRaises(ValueError, Sender.from_meta, meta)


class CheckTests(SynchronousTestCase):
    def test_goodAccess(self) -> None:
        record = access()
        result, problems = check(record, SERVICE)
        self.assertEqual(problems, [])
        assert result is not None
        self.assertEqual((result.kind, result.fields), ("access", record))

    def test_unknownFieldsDropped(self) -> None:
        result, problems = check(access(evil="x", **{"\n": 1}), SERVICE)
        assert result is not None
        self.assertNotIn("evil", result.fields)
        self.assertEqual(len(problems), 2)
        self.assertIn("unknown field 'evil'", problems[0])
        self.assertNotIn("\n", problems[1])

    def test_serviceCannotNameItsService(self) -> None:
        """A service instance's service name comes from the launcher, not from the record."""
        result, problems = check(access(service="other"), SERVICE)
        assert result is not None
        self.assertNotIn("service", result.fields)
        self.assertEqual(problems, ["unknown field 'service'"])
        self.assertEqual(checked(access(service="hello"), DISPATCHER)["service"], "hello")

    def test_wrongTypes(self) -> None:
        result, problems = check(access(status="200", bytes=1.5, client=7, referer=None, response_time=True), SERVICE)
        self.assertIsNone(result)  # no usable status
        self.assertEqual(len(problems), 6)
        result, problems = check(access(bytes=2**80), SERVICE)
        assert result is not None
        self.assertNotIn("bytes", result.fields)

    def test_oversizeCut(self) -> None:
        result, problems = check(access(user_agent="a" * 100_000), SERVICE)
        assert result is not None
        self.assertEqual(len(result.fields["user_agent"]), 16 * 1024)
        self.assertIn("cut from 100000", problems[0])

    def test_malformed(self) -> None:
        for record in ([1, 2], "text", None, 3, {"kind": "nope"}, {"kind": 3}, {"status": 200}):
            result, problems = check(record, SERVICE)
            self.assertIsNone(result, record)
            self.assertEqual(len(problems), 1, record)

    def test_accessOnlyFromServingProcesses(self) -> None:
        result, problems = check(access(), LAUNCHER)
        self.assertIsNone(result)
        self.assertIn("may not send access", problems[0])

    def test_event(self) -> None:
        fields = checked({"kind": "event", "time": T, "level": "error", "text": "boom", "traceback": "T\nB"})
        self.assertEqual(fields["level"], "error")
        result, problems = check({"kind": "event", "level": "shout"}, SERVICE)
        assert result is not None
        self.assertEqual((result.fields["level"], result.fields["text"]), ("error", ""))
        self.assertEqual(len(problems), 1)

    def test_dropped(self) -> None:
        self.assertEqual(checked({"kind": "dropped", "count": 3})["count"], 3)
        self.assertIsNone(check({"kind": "dropped"}, SERVICE)[0])


class EscapeTests(SynchronousTestCase):
    def test_printableUnchanged(self) -> None:
        text = "Mozilla/5.0 (X11; Linux x86_64) ~!@#$%^&*()_+{}|:<>?"
        self.assertEqual(escape(text), text)

    def test_controlAndNonAscii(self) -> None:
        self.assertEqual(escape('a\nb\r\x00"\\\x7f\xe9\u20ac\U0001f600'),
                         'a\\x0ab\\x0d\\x00\\"\\\\\\x7f\\xe9\\u20ac\\U0001f600')

    def test_bare(self) -> None:
        """An unquoted field cannot contain a space, so it cannot pose as several fields."""
        self.assertEqual(escape_bare("1.2.3.4 - - [x]"), "1.2.3.4\\x20-\\x20-\\x20[x]")
        self.assertEqual(escape_bare(""), "-")

    def test_text(self) -> None:
        self.assertEqual(escape_text('say "hi"\n\\'), 'say "hi"\\x0a\\\\')


class AccessLineTests(SynchronousTestCase):
    def test_combined(self) -> None:
        """Apache's combined format (client unquoted), then service and response time in us."""
        line = access_line(checked(access()), SERVICE, COMBINED, TimeFormats())
        self.assertEqual(
            line,
            '127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /hello?id=1 HTTP/1.1" 200 2326 '
            '"http://example.com/start.html" "Mozilla/4.08" hello 1520\n',
        )

    def test_missingFields(self) -> None:
        line = access_line(checked({"kind": "access", "status": 404}, DISPATCHER), DISPATCHER, COMBINED, TimeFormats())
        self.assertEqual(line, '- - - [-] "-" 404 - "-" "-" - -\n')

    def test_zeroBytesIsDash(self) -> None:
        line = access_line(checked(access(bytes=0)), SERVICE, ("status", "bytes"), TimeFormats())
        self.assertEqual(line, "200 -\n")

    def test_chosenFields(self) -> None:
        fields = parse_access_fields("request_id instance service status response_time tls client")
        line = access_line(checked(access(tls="TLSv1.3")), SERVICE, fields, TimeFormats())
        self.assertEqual(line, "abc-1 0 hello 200 1520 TLSv1.3 127.0.0.1\n")
        line = access_line(checked(access(service="hello"), DISPATCHER), DISPATCHER, fields, TimeFormats())
        self.assertEqual(line, "abc-1 - hello 200 1520 - 127.0.0.1\n")

    def test_injection(self) -> None:
        """Newlines and quotes from a record never make a second line or a fake field."""
        record = access(
            user_agent='x"\n127.0.0.1 - - [forged] "GET /admin HTTP/1.1" 200 1 "-" "-" hello 1',
            request="GET /\r\nX HTTP/1.1",
            client="6.6.6.6 - -",
            request_id="a b",
        )
        line = access_line(checked(record), SERVICE, COMBINED + ("request_id",), TimeFormats())
        self.assertEqual(line.count("\n"), 1)
        self.assertTrue(line.endswith("\n"))
        self.assertNotIn("\r", line)
        self.assertTrue(line.startswith("6.6.6.6\\x20-\\x20- - - "))
        self.assertIn('"x\\"\\x0a127.0.0.1 - - [forged] \\"GET /admin HTTP/1.1\\" 200 1 \\"-\\" \\"-\\" hello 1"', line)
        self.assertTrue(line.endswith(" a\\x20b\n"))
        self.assertTrue(all(0x20 <= ord(c) < 0x7f for c in line[:-1]))

    def test_host(self) -> None:
        """The host field is escaped like any bare field: a hostile Host cannot split the line."""
        record = access(host="evil.example\n127.0.0.1 - - x")
        line = access_line(checked(record), SERVICE, ("status", "host"), TimeFormats())
        self.assertEqual(line, "200 evil.example\\x0a127.0.0.1\\x20-\\x20-\\x20x\n")
        self.assertEqual(access_line(checked(access()), SERVICE, ("host",), TimeFormats()), "-\n")
        self.assertEqual(json.loads(access_json(checked(access(host="a.example")), SERVICE, TimeFormats()))["host"], "a.example")

    def test_parseFields(self) -> None:
        self.assertEqual(parse_access_fields("combined"), COMBINED)
        self.assertEqual(parse_access_fields("combined request_id"), COMBINED + ("request_id",))
        self.assertEqual(set(ACCESS_FIELDS), set(COMBINED) | {"instance", "request_id", "tls", "host"})
        self.assertNotIn("host", COMBINED)  # existing parsers of combined lines keep working
        for bad in ("", "   ", "client refferer"):
            self.assertRaises(ValueError, parse_access_fields, bad)
        e = self.assertRaises(ValueError, parse_access_fields, "client refferer")
        self.assertIn("'refferer'", str(e))


class AccessJsonTests(SynchronousTestCase):
    def test_everyField(self) -> None:
        line = access_json(checked(access(user_agent="é\n")), SERVICE, TimeFormats())
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1)
        line.encode("ascii")
        document = json.loads(line)
        self.assertEqual(
            document,
            {
                "time": "2000-10-10T13:55:36.123456Z",
                "client": "127.0.0.1",
                "request": "GET /hello?id=1 HTTP/1.1",
                "status": 200,
                "bytes": 2326,
                "referer": "http://example.com/start.html",
                "user_agent": "é\n",
                "service": "hello",
                "instance": 0,
                "request_id": "abc-1",
                "response_time_us": 1520,
                "tls": None,
                "host": None,
                "source": "hello.0",
                "pid": 1234,
            },
        )


class ErrorLineTests(SynchronousTestCase):
    def test_eventWithTraceback(self) -> None:
        fields = checked({"kind": "event", "time": T, "level": "critical", "text": "render GET /x failed",
                          "traceback": "Traceback (most recent call last):\n  File \"x\"\nValueError: bad\x1b[31m\n"})
        self.assertEqual(
            event_lines(fields, SERVICE, TimeFormats()),
            "[2000-10-10T13:55:36.123456Z] [critical] [hello.0 pid 1234] render GET /x failed\n"
            "[2000-10-10T13:55:36.123456Z] [critical] [hello.0 pid 1234]   Traceback (most recent call last):\n"
            "[2000-10-10T13:55:36.123456Z] [critical] [hello.0 pid 1234]     File \"x\"\n"
            "[2000-10-10T13:55:36.123456Z] [critical] [hello.0 pid 1234]   ValueError: bad\\x1b[31m\n",
        )

    def test_eventRequestId(self) -> None:
        """The request's id goes on the event's first line, escaped like any bare value."""
        fields = checked({"kind": "event", "time": T, "level": "error", "text": "render GET /x failed",
                          "request_id": "3f9a-1a", "traceback": "ValueError: bad\n"})
        self.assertEqual(
            event_lines(fields, SERVICE, TimeFormats()).splitlines()[0],
            "[2000-10-10T13:55:36.123456Z] [error] [hello.0 pid 1234] render GET /x failed [request_id 3f9a-1a]",
        )
        fields = checked({"kind": "event", "time": T, "level": "error", "text": "x", "request_id": "a b]\n"})
        self.assertEqual(event_lines(fields, SERVICE, TimeFormats()),
                         "[2000-10-10T13:55:36.123456Z] [error] [hello.0 pid 1234] x [request_id a\\x20b]\\x0a]\n")

    def test_forgedSourceImpossible(self) -> None:
        """Every line starts with the daemon's prefix naming the real sender."""
        fields = checked({"kind": "event", "time": T, "level": "info",
                          "text": "x\n[2000-10-10T13:55:36.123456Z] [info] [launcher pid 1] started",
                          "traceback": "a\n[2000] [info] [launcher pid 1] forged"})
        for line in event_lines(fields, SERVICE, TimeFormats()).splitlines():
            self.assertTrue(line.startswith("[2000-10-10T13:55:36.123456Z] [info] [hello.0 pid 1234] "), line)

    def test_statusLine(self) -> None:
        times = TimeFormats()
        self.assertIsNone(status_line(checked(access()), SERVICE, times))
        line = status_line(checked(access(status=404, reason="No service here.", service="-"), DISPATCHER), DISPATCHER, times)
        self.assertEqual(
            line,
            '[2000-10-10T13:55:36.123456Z] [warn] [dispatcher pid 99] 404 "GET /hello?id=1 HTTP/1.1" '
            "from 127.0.0.1 service - request_id abc-1: No service here.\n",
        )
        line = status_line(checked(access(status=500)), SERVICE, times)
        assert line is not None
        self.assertIn("[error] [hello.0 pid 1234] 500 ", line)
        self.assertIn(" service hello ", line)

    def test_dropped(self) -> None:
        line = dropped_line(checked({"kind": "dropped", "time": T, "count": 12, "capacity": 100}), SERVICE, TimeFormats())
        self.assertEqual(
            line,
            "[2000-10-10T13:55:36.123456Z] [error] [hello.0 pid 1234] dropped 12 log records while the log "
            "daemon was away (its buffer holds 100 records)\n",
        )

    def test_problem(self) -> None:
        line = problem_line(T, LOGD, SERVICE, 57, ["unknown field 'evil'", "field 'x'\n"], 2, TimeFormats())
        self.assertEqual(
            line,
            "[2000-10-10T13:55:36.123456Z] [warn] [logd pid 7] bad log record from hello.0 pid 1234 (seq 57): "
            "unknown field 'evil'; field 'x'\\x0a (and 2 more bad records in this batch)\n",
        )


class TimeFormatsTests(SynchronousTestCase):
    def test_formats(self) -> None:
        times = TimeFormats()
        self.assertEqual(times.clf(T), "10/Oct/2000:13:55:36 +0000")
        self.assertEqual(times.iso(T), "2000-10-10T13:55:36.123456Z")
        self.assertEqual(times.iso(T + 1_000_000), "2000-10-10T13:55:37.123456Z")
        self.assertEqual(times.clf(T), "10/Oct/2000:13:55:36 +0000")

    def test_outOfRange(self) -> None:
        self.assertEqual(TimeFormats().clf(2**62), "-")
        self.assertEqual(TimeFormats().iso(-(2**62)), "-")


#: Values of every shape a JSON record can carry, including the ones check() refuses or cuts.
_VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.just("x" * (MAX_TEXT + 1)),
)
_NAMES = st.sampled_from(sorted(ACCESS_RECORD) + ["evil", "count", "level"])


class FastPathTests(SynchronousTestCase):
    """The daemon's fast paths (L{usual_access}, C{access_line(plain=True)}) agree with the long way."""

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(_NAMES, _VALUES, max_size=8), st.sampled_from([SERVICE, DISPATCHER, LAUNCHER]))
    def test_usualAccessOnlyWhenCheckFindsNothing(self, extra: dict[str, object], sender: Sender) -> None:
        """A record taken as it is would have passed check() unchanged, with no problem."""
        record = access(**extra) if "kind" not in extra else {**access(), **extra}
        if usual_access(record, sender.role):
            result, problems = check(dict(record), sender)
            self.assertEqual(problems, [])
            assert result is not None
            self.assertEqual((result.kind, result.fields), ("access", record))

    def test_usualAccessRefuses(self) -> None:
        """Each thing check() would report sends the record the long way."""
        self.assertTrue(usual_access(access(), "service"))
        self.assertTrue(usual_access(access(service="hello"), "dispatcher"))
        for record, role in [
            (access(service="hello"), "service"),  # a service may not name its service
            (access(), "launcher"),  # only serving processes send access records
            (access(evil="x"), "service"),
            (access(status=True), "service"),
            (access(status="200"), "service"),
            (access(bytes=2**62 + 1), "service"),
            (access(referer=None), "service"),
            (access(user_agent="x" * (MAX_TEXT + 1)), "service"),
            ({k: v for k, v in access().items() if k != "status"}, "service"),
            (access(kind="event"), "service"),
        ]:
            self.assertFalse(usual_access(record, role), (record, role))

    def test_plainStrings(self) -> None:
        """A batch is plain only if no string in it can need escaping in a quoted field."""
        self.assertTrue(logchannel_payload([access()]) and plain_strings(logchannel_payload([access()])))
        for value in ['say "hi"', "back\\slash", "new\nline", "tab\t", "del\x7f", "caf\u00e9", "\u2028", "nul\x00"]:
            payload = logchannel_payload([access(user_agent=value)])
            self.assertFalse(plain_strings(payload), value)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.text(st.sampled_from(" -/?=.:[]'%+~aZ09"), max_size=20), min_size=6, max_size=6))
    def test_plainLineIsTheEscapedLine(self, texts: list[str]) -> None:
        """In a plain batch the line without escaping is the line with it, byte for byte
        (spaces and empty values included: unquoted fields still escape their spaces)."""
        client, request, referer, agent, request_id, service = texts
        record = access(client=client, request=request, referer=referer, user_agent=agent, request_id=request_id)
        payload = logchannel_payload([record, access(service=service)])
        self.assertTrue(plain_strings(payload))
        for decoded, sender in zip(json.loads(payload), (SERVICE, DISPATCHER)):
            fields = checked(decoded, sender)
            slow = access_line(dict(fields), sender, COMBINED, TimeFormats())
            fast = access_line(dict(fields), sender, COMBINED, TimeFormats(), plain=True)
            self.assertEqual(fast, slow)

    def test_plainLineMissingFields(self) -> None:
        record = {"kind": "access", "status": 200, "time": T, "client": "", "bytes": 0}
        slow = access_line(checked(record), SERVICE, COMBINED, TimeFormats())
        self.assertEqual(access_line(checked(record), SERVICE, COMBINED, TimeFormats(), plain=True), slow)
        self.assertEqual(slow, '- - - [10/Oct/2000:13:55:36 +0000] "-" 200 - "-" "-" hello -\n')


def logchannel_payload(records: list[object]) -> bytes:
    """A C{records} payload as a sender encodes it."""
    return logchannel.encode_records(records)  # type: ignore[arg-type]
