"""
Tests for L{okws_twisted.logd.daemon} and L{okws_twisted.logd.files}: batches in, files out, each record once.

The writer works on real files in a temporary directory; the daemon gets
real seqpacket channels driven by a L{MemoryReactorClock}.  A daemon
"killed" in the middle of a batch is a writer whose file write stops half
way, followed by a fresh writer on the same directory, as a relaunch would.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.logd.daemon import LogDaemon, LogWriter, OwnEvents, start_role
from okws_twisted.logd.files import LogFile
from okws_twisted.logd.format import Sender, service_access_records
from okws_twisted.logd.journal import JOURNAL_NAME, parse
from okws_twisted.wire import limits, logchannel
from okws_twisted.wire.channel import encode, read_one_blocking, socketpair

SERVICE = Sender(name="hello.0", role="service", pid=1234, run="run1", launch=1, service="hello", index=0)
DISPATCHER = Sender(name="dispatcher", role="dispatcher", pid=99, run="run1")
ME = Sender(name="logd", role="logd", pid=7, run="run1")


def site(log_dir: str, **keys: Any) -> SiteConfig:
    return SiteConfig(
        file="site.ini",
        base_dir="/srv",
        log_dir=os.path.abspath(log_dir),
        templates="/srv/templates",
        services=(ServiceConfig(name="hello", resource="a:B", paths=("/hello",)),),
        **keys,
    )


def hit(n: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "access", "time": 1_000_000 * n, "client": "127.0.0.1", "request": f"GET /hello?id={n} HTTP/1.1",
            "status": 200, "bytes": 10, **extra}


class Killed(Exception):
    """The simulated kill -9."""


class WriterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.clock = MemoryReactorClock()

    def writer(self, **keys: Any) -> LogWriter:
        writer = LogWriter(site(self.dir, **keys), ME, self.clock, current_run="run1")
        writer.start()
        self.addCleanup(writer.close)
        return writer

    def read(self, name: str) -> str:
        with open(os.path.join(self.dir, name)) as f:
            return f.read()

    def lines(self, name: str) -> list[str]:
        return self.read(name).splitlines()


class LogWriterTests(WriterTestCase):
    def test_filesCreated(self) -> None:
        self.writer()
        self.assertEqual(sorted(os.listdir(self.dir)), [JOURNAL_NAME, "access.log", "error.log"])
        self.assertEqual(os.stat(os.path.join(self.dir, "access.log")).st_mode & 0o777, 0o640)

    def test_accessLinesAndAck(self) -> None:
        writer = self.writer()
        self.assertEqual(writer.write_batch(SERVICE, 1, [hit(1), hit(2)]), 2)
        lines = self.lines("access.log")
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith('127.0.0.1 - - [01/Jan/1970:00:00:01 +0000] "GET /hello?id=1 HTTP/1.1" 200 10 "-" "-" hello '))
        self.assertEqual(self.read("error.log"), "")

    def test_duplicatesSkipped(self) -> None:
        """A resent batch, or the resent part of one, is not written again."""
        writer = self.writer()
        writer.write_batch(SERVICE, 1, [hit(1), hit(2)])
        self.assertEqual(writer.write_batch(SERVICE, 1, [hit(1), hit(2)]), 2)
        self.assertEqual(writer.write_batch(SERVICE, 2, [hit(2), hit(3)]), 3)
        self.assertEqual([line.split('"')[1] for line in self.lines("access.log")],
                         [f"GET /hello?id={n} HTTP/1.1" for n in (1, 2, 3)])
        # Another sender's numbers are its own.
        self.assertEqual(writer.write_batch(DISPATCHER, 1, [hit(9, status=404)]), 1)
        self.assertEqual(len(self.lines("access.log")), 4)

    def test_errorStatusesAndEvents(self) -> None:
        writer = self.writer()
        writer.write_batch(DISPATCHER, 1, [hit(1, status=503, reason="busy", service="hello")])
        writer.write_batch(SERVICE, 1, [{"kind": "event", "time": 5, "level": "critical", "text": "render failed",
                                         "traceback": "Traceback:\nValueError: x"}])
        errors = self.lines("error.log")
        self.assertEqual(len(errors), 4)
        self.assertIn("[error] [dispatcher pid 99] 503 ", errors[0])
        self.assertTrue(errors[0].endswith(": busy"))
        self.assertIn("[critical] [hello.0 pid 1234] render failed", errors[1])
        self.assertTrue(errors[3].endswith("]   ValueError: x"))

    def test_badRecordsReportedNotFatal(self) -> None:
        writer = self.writer()
        records = [
            hit(1, user_agent="evil\n127.0.0.1 - - [forged]", evil="x"),
            "junk",
            {"kind": "access"},
            hit(4),
        ]
        self.assertEqual(writer.write_batch(SERVICE, 1, records), 4)
        access = self.lines("access.log")
        self.assertEqual(len(access), 2)
        self.assertIn('"evil\\x0a127.0.0.1 - - [forged]"', access[0])
        errors = self.lines("error.log")
        self.assertEqual(len(errors), 1)
        self.assertIn("[warn] [logd pid 7] bad log record from hello.0 pid 1234 (seq 1): unknown field 'evil'", errors[0])
        self.assertIn("(and 2 more bad records in this batch)", errors[0])
        self.assertEqual(writer.bad_records, 3)

    def test_json(self) -> None:
        writer = self.writer(access_log_json=True)
        writer.write_batch(SERVICE, 1, [hit(1, user_agent="a\nb")])
        [line] = self.lines("access.json")
        document = json.loads(line)
        self.assertEqual((document["user_agent"], document["service"], document["pid"]), ("a\nb", "hello", 1234))

    def test_accessLogOff(self) -> None:
        writer = self.writer(access_log=False)
        writer.write_batch(SERVICE, 1, [hit(1), hit(2, status=500)])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "access.log")))
        self.assertEqual(len(self.lines("error.log")), 1)

    def test_fieldsChosen(self) -> None:
        writer = self.writer(access_log_fields=("request_id", "status"))
        writer.write_batch(SERVICE, 1, [hit(1, request_id="r-1")])
        self.assertEqual(self.lines("access.log"), ["r-1 200"])

    def test_journalled(self) -> None:
        writer = self.writer()
        writer.write_batch(SERVICE, 1, [hit(1)])
        with open(os.path.join(self.dir, JOURNAL_NAME), "rb") as f:
            [entry], bad = parse(f.read())
        self.assertEqual((entry.sender, entry.first, entry.last, bad), (SERVICE.key, 1, 1, 0))
        self.assertEqual([w.name for w in entry.writes], ["access.log"])

    def test_ownLines(self) -> None:
        writer = self.writer()
        writer.own("info", "hello\nthere")
        self.assertEqual(self.lines("error.log"), ["[1970-01-01T00:00:00.000000Z] [info] [logd pid 7] hello\\x0athere"])


class CrashTests(WriterTestCase):
    """Exactly once across a kill at any point of a batch."""

    def test_killedAfterWritingBeforeAck(self) -> None:
        first = self.writer()
        first.write_batch(SERVICE, 1, [hit(1), hit(2)])
        # killed here: the ack never reached the sender, which resends to the new daemon.
        second = self.writer()
        self.assertEqual(second.write_batch(SERVICE, 1, [hit(1), hit(2), hit(3)]), 3)
        self.assertEqual([line.split("id=")[1].split(" ")[0] for line in self.lines("access.log")], ["1", "2", "3"])

    def test_killedInTheMiddleOfABatch(self) -> None:
        first = self.writer(access_log_json=True)
        first.write_batch(SERVICE, 1, [hit(1)])
        access = first.files["access.log"]
        real_append = access.append

        def half_then_die(data: bytes) -> None:
            real_append(data[: len(data) // 2])
            raise Killed()

        access.append = half_then_die  # type: ignore[method-assign]
        self.assertRaises(Killed, first.write_batch, SERVICE, 2, [hit(2), hit(3, status=404)])
        self.assertIn("id=2", self.read("access.log"))  # torn
        second = self.writer(access_log_json=True)
        self.assertEqual(self.lines("access.log")[-1].split("id=")[1][:1], "1")
        self.assertEqual(len(self.lines("access.log")), 1)
        self.assertEqual(len(self.lines("access.json")), 1)
        errors = self.lines("error.log")
        self.assertEqual(len(errors), 1)
        self.assertIn("recovered from an unclean stop: records 2-3 of run1/hello.0/1/1234 were partly written", errors[0])
        # The sender resends; now everything is there once.
        self.assertEqual(second.write_batch(SERVICE, 2, [hit(2), hit(3, status=404)]), 3)
        self.assertEqual([line.split("id=")[1][:1] for line in self.lines("access.log")], ["1", "2", "3"])
        self.assertEqual(len(self.lines("access.json")), 3)
        self.assertEqual(sum(" 404 " in line for line in self.lines("error.log")), 1)


class RotationTests(WriterTestCase):
    def test_reopenAfterMove(self) -> None:
        writer = self.writer()
        writer.write_batch(SERVICE, 1, [hit(1)])
        os.rename(os.path.join(self.dir, "access.log"), os.path.join(self.dir, "access.log.old"))
        writer.write_batch(SERVICE, 2, [hit(2)])  # still the moved file: nothing lost
        writer.reopen()
        writer.write_batch(SERVICE, 3, [hit(3)])
        self.assertEqual(len(self.lines("access.log.old")), 2)
        self.assertEqual(len(self.lines("access.log")), 1)
        self.assertIn("id=3", self.read("access.log"))
        self.assertIn("reopened the log files", self.read("error.log"))

    def test_bySize(self) -> None:
        writer = self.writer(log_max_size=200, log_keep=2)
        for n in range(1, 11):
            writer.write_batch(SERVICE, n, [hit(n)])
        names = sorted(name for name in os.listdir(self.dir) if name.startswith("access"))
        self.assertEqual(names, ["access.log", "access.log.1", "access.log.2"])
        for name in names:
            size = os.path.getsize(os.path.join(self.dir, name))
            self.assertLess(size, 200 + 100, name)
        self.assertIn("id=10 ", self.read("access.log") + self.read("access.log.1"))
        self.assertNotIn("id=1 ", self.read("access.log.2"))

    def test_logFileRotateShifts(self) -> None:
        os.makedirs(self.dir)
        f = LogFile(self.dir, "x.log", max_size=1, keep=3)
        f.open()
        self.addCleanup(f.close)
        for n in range(5):
            f.append(b"%d\n" % n)
            self.assertTrue(f.full)
            f.rotate()
        self.assertEqual(sorted(os.listdir(self.dir)), ["x.log", "x.log.1", "x.log.2", "x.log.3"])
        with open(os.path.join(self.dir, "x.log.1"), "rb") as g:
            self.assertEqual(g.read(), b"4\n")
        with open(os.path.join(self.dir, "x.log.3"), "rb") as g:
            self.assertEqual(g.read(), b"2\n")


class Peer:
    """A sender's end of a log channel, as a test holds it."""

    def __init__(self, daemon: LogDaemon, meta: dict[str, Any]) -> None:
        ours, theirs = socketpair()
        self.sock = ours
        self.daemon = daemon
        daemon.peer("log", meta, theirs)
        self.link = daemon.links[Sender.from_meta(meta).key]

    def send(self, meta: dict[str, Any], payload: bytes = b"") -> None:
        for datagram in encode(meta, payload):
            self.sock.send(datagram)
        self.link.channel.doRead()

    def records(self, first: int, records: list[Any]) -> int:
        self.send(logchannel.records_meta(first), logchannel.encode_records(records))
        return logchannel.parse_ack(read_one_blocking(self.sock, 5, limits.LOG_SENDER))


class LogDaemonTests(WriterTestCase):
    def daemon(self) -> LogDaemon:
        daemon = LogDaemon(self.clock, self.writer())
        self.addCleanup(daemon.stop)
        return daemon

    def meta(self, sender: Sender) -> dict[str, Any]:
        return {"k": "peer", "channel": "log", "name": sender.name, "role": sender.role, "pid": sender.pid,
                "run": sender.run, "launch": sender.launch, "service": sender.service, "index": sender.index}

    def test_recordsAcked(self) -> None:
        peer = Peer(self.daemon(), self.meta(SERVICE))
        self.assertEqual(peer.records(1, [hit(1), hit(2)]), 2)
        self.assertEqual(peer.records(1, [hit(1), hit(2)]), 2)
        self.assertEqual(len(self.lines("access.log")), 2)

    def test_batchesEscapedWhateverTheirShape(self) -> None:
        """Through the channel, a batch with a quote, a backslash, a newline or non-ASCII in a
        field is escaped, and so is a space in an unquoted field of an otherwise plain batch;
        a well-formed record from the service never names its own service."""
        peer = Peer(self.daemon(), self.meta(SERVICE))
        forged = '"\n127.0.0.1 - - [forged] "GET /admin HTTP/1.1" 200 1 "-" "-" hello 1'
        self.assertEqual(peer.records(1, [hit(1, user_agent="ok" + forged)]), 1)
        self.assertEqual(peer.records(2, [hit(2, referer="a\\b"), hit(3, user_agent="caf\u00e9")]), 3)
        self.assertEqual(peer.records(4, [hit(4, client="6.6.6.6 - -", request_id="a b")]), 4)
        self.assertEqual(peer.records(5, [hit(5, user_agent="del\x7f")]), 5)
        lines = self.lines("access.log")
        self.assertEqual(len(lines), 5)
        self.assertIn('"ok\\"\\x0a127.0.0.1 - - [forged] \\"GET /admin HTTP/1.1\\" 200 1 \\"-\\" \\"-\\" hello 1"', lines[0])
        self.assertIn('"a\\\\b"', lines[1])
        self.assertIn('"caf\\xe9"', lines[2])
        self.assertTrue(lines[3].startswith("6.6.6.6\\x20-\\x20- - - ["), lines[3])
        self.assertIn('"del\\x7f"', lines[4])
        for line in lines:
            self.assertTrue(all(0x20 <= ord(c) < 0x7F for c in line), line)
            self.assertIn(" hello ", line)

    def test_servicesUsualBatches(self) -> None:
        """A service's usual batches, as its sender encodes them, through the channel (the fast
        path): the combined lines and the error line, a resent record skipped, and a batch of
        another shape after them (the long way)."""
        peer = Peer(self.daemon(), self.meta(SERVICE))
        t = 971186136.25  # 10 Oct 2000 13:55:36.25 UTC

        def values(n: int, status: int = 200, sent: int = 10, client: str = "127.0.0.1", agent: Any = None) -> Any:
            return (t + n, t + n + 0.5, client, b"GET", f"/hello?id={n}".encode(), b"HTTP/1.1", status, sent, f"r-{n}",
                    None, agent, None, b"example.com")

        first = [values(1), values(2, status=404, sent=0, client="a b", agent=[b"curl/8"])]
        self.assertIsNotNone(service_access_records(logchannel.encode_records(first).decode()))  # the fast path's shape
        self.assertEqual(peer.records(1, first), 2)
        self.assertEqual(peer.records(2, [values(2, status=404, sent=0, client="a b", agent=[b"curl/8"]), values(3)]), 3)
        self.assertEqual(peer.records(4, [hit(4)]), 4)
        self.assertEqual(self.lines("access.log"), [
            '127.0.0.1 - - [10/Oct/2000:13:55:37 +0000] "GET /hello?id=1 HTTP/1.1" 200 10 "-" "-" hello 500000',
            'a\\x20b - - [10/Oct/2000:13:55:38 +0000] "GET /hello?id=2 HTTP/1.1" 404 - "-" "curl/8" hello 500000',
            '127.0.0.1 - - [10/Oct/2000:13:55:39 +0000] "GET /hello?id=3 HTTP/1.1" 200 10 "-" "-" hello 500000',
            '127.0.0.1 - - [01/Jan/1970:00:00:04 +0000] "GET /hello?id=4 HTTP/1.1" 200 10 "-" "-" hello -',
        ])
        self.assertEqual(self.lines("error.log"), [
            '[2000-10-10T13:55:38.250000Z] [warn] [hello.0 pid 1234] 404 "GET /hello?id=2 HTTP/1.1" from a\\x20b'
            " service hello request_id r-2",
        ])

    def test_identityFromLauncherNotRecord(self) -> None:
        """The service name in the files is the one the launcher gave the channel."""
        peer = Peer(self.daemon(), self.meta(SERVICE))
        peer.records(1, [hit(1, service="admin")])
        [line] = self.lines("access.log")
        self.assertTrue(line.split()[-2] == "hello", line)

    def test_malformedMessageReported(self) -> None:
        daemon = self.daemon()
        peer = Peer(daemon, self.meta(SERVICE))
        peer.send(logchannel.records_meta(1), b"{not json")
        peer.send({"k": "reopen"})
        peer.send({"k": "records"}, b"[]")
        errors = self.lines("error.log")
        self.assertEqual(len(errors), 3)
        self.assertTrue(all("bad log message from hello.0 pid 1234" in line for line in errors))
        self.assertEqual(peer.records(1, [hit(1)]), 1)  # the channel still works

    def test_hugePayloadRefused(self) -> None:
        """A sender cannot make the daemon hold an unbounded batch: its channel is
        closed, that is logged, and the launcher is told (``lost``) to relaunch it."""
        daemon = self.daemon()
        told: list[dict[str, Any]] = []
        daemon.to_launcher = told.append
        peer = Peer(daemon, self.meta(SERVICE))
        [datagram] = encode({"k": "records", "first": 1, "more": 2**40}, b"[")
        peer.sock.send(datagram)
        peer.link.channel.doRead()
        self.assertFalse(peer.link.channel.connected)
        self.assertEqual(daemon.links, {})
        [line] = self.lines("error.log")
        self.assertIn("[warn] [logd pid 7] closed the log channel of hello.0 pid 1234: ", line)
        self.assertIn("over this channel's limit", line)
        [lost] = told
        self.assertEqual((lost["k"], lost["pid"]), ("lost", 1234))
        self.assertIn("over this channel's limit", lost["why"])

    def test_stoppingTellsNothing(self) -> None:
        """Channels the daemon closes itself (stopping) are not reported."""
        daemon = self.daemon()
        told: list[dict[str, Any]] = []
        daemon.to_launcher = told.append
        Peer(daemon, self.meta(SERVICE))
        daemon.stop()
        self.assertEqual(told, [])

    def test_reopenOnlyFromLauncher(self) -> None:
        daemon = self.daemon()
        launcher = Peer(daemon, {"name": "launcher", "role": "launcher", "pid": 1, "run": "run1"})
        os.rename(os.path.join(self.dir, "access.log"), os.path.join(self.dir, "moved"))
        launcher.send({"k": "reopen"})
        self.assertTrue(os.path.exists(os.path.join(self.dir, "access.log")))

    def test_otherChannelRefused(self) -> None:
        daemon = self.daemon()
        a, b = socketpair()
        self.addCleanup(a.close)
        daemon.peer("handoff", self.meta(SERVICE), b)
        daemon.peer("log", {"name": "x"}, socket.socket(fileno=os.dup(a.fileno())))
        self.assertEqual(daemon.links, {})
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_ownEventsToErrorLog(self) -> None:
        daemon = self.daemon()
        log = Logger(observer=LogPublisher(OwnEvents(daemon)))
        log.info("not written")
        log.error("something {what}", what="broke")
        [line] = self.lines("error.log")
        self.assertIn("[error] [logd pid 7] something broke", line)

    def test_startRole(self) -> None:
        stopped: list[bool] = []
        daemon = start_role(self.clock, site(self.dir), {"run": "run1", "launch": 2}, lambda: stopped.append(True))
        self.assertEqual((daemon.writer.me.name, daemon.writer.me.run, daemon.writer.me.launch), ("logd", "run1", 2))
        daemon.stop(0)
        self.assertEqual(stopped, [True])


class StampTests(WriterTestCase):
    def test_recordWithoutTimeStampedOnArrival(self) -> None:
        writer = self.writer()
        self.clock.advance(3.5)
        writer.write_batch(SERVICE, 1, [{"kind": "event", "level": "info", "text": "no time"}, {"kind": "access", "status": 200}])
        self.assertEqual(self.lines("error.log"), ["[1970-01-01T00:00:03.500000Z] [info] [hello.0 pid 1234] no time"])
        self.assertIn("[01/Jan/1970:00:00:03 +0000]", self.read("access.log"))
