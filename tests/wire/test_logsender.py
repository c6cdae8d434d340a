"""
Tests for L{okws_twisted.wire.logsender} and L{okws_twisted.wire.logchannel}: batching, the bounded buffer, acks and resends.

Time is a L{MemoryReactorClock}; the channel is a real seqpacket pair whose
far end the test reads and writes as the log daemon would.
"""

from __future__ import annotations

import json
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire import limits, logchannel
from okws_twisted.wire.handoff import tls_summary
from okws_twisted.wire.channel import (
    ChannelError,
    Message,
    encode,
    read_one_blocking,
    socketpair,
)
from okws_twisted.wire.logsender import (
    FLUSH_COUNT,
    FLUSH_INTERVAL,
    EventForwarder,
    RecordBuffer,
    RecordSender,
    RequestIds,
)


def record(n: int) -> dict[str, object]:
    return {"kind": "access", "status": 200, "request": f"GET /?id={n} HTTP/1.1"}


class RecordBufferTests(SynchronousTestCase):
    def test_sealNumbersConsecutively(self) -> None:
        buffer = RecordBuffer(10)
        for n in range(3):
            buffer.add(record(n))
        first = buffer.seal()
        buffer.add(record(3))
        second = buffer.seal()
        assert first is not None and second is not None
        self.assertEqual((first.first, first.last, second.first, second.last), (1, 3, 4, 4))
        self.assertEqual(json.loads(first.payload), [record(0), record(1), record(2)])
        self.assertIsNone(buffer.seal())
        self.assertEqual(buffer.held, 4)

    def test_ackForgetsWholeBatches(self) -> None:
        buffer = RecordBuffer(10)
        for n in range(5):
            buffer.add(record(n))
            buffer.seal()
        buffer.ack(2)
        self.assertEqual([b.first for b in buffer.sealed], [3, 4, 5])
        self.assertEqual(buffer.held, 3)
        buffer.ack(1)  # an old ack changes nothing
        self.assertEqual(buffer.held, 3)
        buffer.ack(5)
        self.assertEqual((buffer.held, list(buffer.sealed)), (0, []))

    def test_boundAndDrops(self) -> None:
        """A full buffer drops new records and counts them; the count is taken once there is room."""
        buffer = RecordBuffer(3)
        results = [buffer.add(record(n)) for n in range(5)]
        self.assertEqual(results, [True, True, True, False, False])
        self.assertEqual((buffer.held, buffer.dropped), (3, 2))
        self.assertEqual(buffer.take_dropped(), 0)  # no room to report yet
        buffer.seal()
        buffer.ack(3)
        self.assertEqual(buffer.take_dropped(), 2)
        self.assertEqual((buffer.dropped, buffer.take_dropped()), (0, 0))

    def test_capacity(self) -> None:
        self.assertRaises(ValueError, RecordBuffer, 0)


class Daemon:
    """The test's end of a log channel: reads batches, sends acks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def batch(self) -> tuple[int, list[object]]:
        msg = read_one_blocking(self.sock, 5, limits.LOG_DAEMON)
        self.sock.setblocking(True)
        return logchannel.parse_records(msg)

    def nothing(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False

    def ack(self, sender: RecordSender, seq: int) -> None:
        for datagram in encode(logchannel.ack_meta(seq)):
            self.sock.send(datagram)
        assert sender.channel is not None
        sender.channel.doRead()


class RecordSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.sender = RecordSender(self.reactor, 1000)

    def connect(self) -> Daemon:
        ours, theirs = socketpair()
        self.addCleanup(theirs.close)
        self.sender.attach(ours)
        return Daemon(theirs)

    def test_emitDoesNoIO(self) -> None:
        """Emitting appends to a list; the batch goes out when the flush timer fires."""
        daemon = self.connect()
        for n in range(3):
            self.sender.emit(record(n))
        self.assertTrue(daemon.nothing())
        self.reactor.advance(FLUSH_INTERVAL - 0.001)
        self.assertTrue(daemon.nothing())
        self.reactor.advance(0.001)
        self.assertEqual(daemon.batch(), (1, [record(0), record(1), record(2)]))
        self.assertTrue(daemon.nothing())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_fullBatchSentNextTurn(self) -> None:
        daemon = self.connect()
        for n in range(FLUSH_COUNT + 1):
            self.sender.emit(record(n))
        self.assertTrue(daemon.nothing())
        self.reactor.advance(0)
        first, records = daemon.batch()
        self.assertEqual((first, len(records)), (1, FLUSH_COUNT + 1))

    def test_largeBatchSplitAndJoined(self) -> None:
        """A batch above the channel's 60 KiB message size still arrives as one."""
        daemon = self.connect()
        for n in range(200):
            self.sender.emit({"kind": "access", "status": 200, "user_agent": "x" * 1000, "request_id": str(n)})
        self.reactor.advance(FLUSH_INTERVAL)
        first, records = daemon.batch()
        self.assertEqual((first, len(records)), (1, 200))

    def test_ackForgets(self) -> None:
        daemon = self.connect()
        self.sender.emit(record(1))
        self.reactor.advance(FLUSH_INTERVAL)
        daemon.batch()
        self.assertEqual(self.sender.held, 1)
        daemon.ack(self.sender, 1)
        self.assertEqual(self.sender.held, 0)

    def test_badAckIgnored(self) -> None:
        daemon = self.connect()
        self.sender.emit(record(1))
        self.reactor.advance(FLUSH_INTERVAL)
        for meta in ({"k": "ack", "seq": "1"}, {"k": "what"}):
            for datagram in encode(meta):
                daemon.sock.send(datagram)
        assert self.sender.channel is not None
        self.sender.channel.doRead()
        self.assertEqual(self.sender.held, 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_bufferedWhileAwayResentOnNewChannel(self) -> None:
        """Records sent to a daemon that died unacknowledged are all sent again, in order."""
        first_daemon = self.connect()
        for n in range(4):
            self.sender.emit(record(n))
        self.reactor.advance(FLUSH_INTERVAL)
        self.assertEqual(first_daemon.batch()[0], 1)
        first_daemon.ack(self.sender, 2)  # an ack for an older batch changes nothing here
        first_daemon.sock.close()  # the daemon dies
        channel = self.sender.channel
        assert channel is not None
        self.assertIsNone(channel.doRead())  # the channel closes itself, with the real reason
        self.assertFalse(channel.connected)
        self.assertIsNone(self.sender.channel)
        for n in range(4, 6):
            self.sender.emit(record(n))
        self.reactor.advance(FLUSH_INTERVAL)  # sealed while nobody listens
        self.sender.emit(record(6))
        second = self.connect()
        self.assertEqual(second.batch(), (1, [record(n) for n in range(4)]))
        self.assertEqual(second.batch(), (5, [record(4), record(5)]))
        self.assertEqual(second.batch(), (7, [record(6)]))
        self.assertTrue(second.nothing())
        second.ack(self.sender, 7)
        self.assertEqual(self.sender.held, 0)

    def test_dropsCountedAndReported(self) -> None:
        """With the daemon away, a full buffer drops and counts; the count is sent once it is back."""
        sender = self.sender = RecordSender(self.reactor, 5)
        for n in range(8):
            sender.emit(record(n))
        self.reactor.advance(FLUSH_INTERVAL)
        self.assertEqual((sender.held, sender.buffer.dropped), (5, 3))
        daemon = self.connect()
        self.assertEqual(daemon.batch(), (1, [record(n) for n in range(5)]))
        self.reactor.advance(12.5)
        daemon.ack(sender, 5)
        self.reactor.advance(FLUSH_INTERVAL)
        first, records = daemon.batch()
        self.assertEqual(first, 6)
        self.assertEqual(records, [{"kind": "dropped", "time": 12_550_000, "count": 3, "capacity": 5}])
        self.assertEqual(sender.buffer.dropped, 0)

    def test_event(self) -> None:
        daemon = self.connect()
        self.reactor.advance(3)
        self.sender.event("error", "boom", "Traceback...")
        self.sender.event("info", "fine")
        self.reactor.advance(FLUSH_INTERVAL)
        self.assertEqual(
            daemon.batch()[1],
            [
                {"kind": "event", "time": 3_000_000, "level": "error", "text": "boom", "traceback": "Traceback..."},
                {"kind": "event", "time": 3_000_000, "level": "info", "text": "fine"},
            ],
        )

    def test_eventCutToTheDaemonsLimits(self) -> None:
        """A batch stays bounded: event text is cut, a traceback keeps its end (where the error is)."""
        self.sender.event("error", "t" * 100_000, "head\n" + "x" * 100_000 + "\nValueError: end")
        [event] = self.sender.buffer.pending
        self.assertEqual(len(event["text"]), 16 * 1024)
        self.assertEqual(len(event["traceback"]), 64 * 1024)
        self.assertTrue(event["traceback"].endswith("ValueError: end"))

    def test_idleFiresOnAck(self) -> None:
        daemon = self.connect()
        self.sender.emit(record(1))
        d = self.sender.idle(timeout=5)
        self.assertNoResult(d)
        self.assertEqual(daemon.batch()[0], 1)  # idle() flushed at once
        daemon.ack(self.sender, 1)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_idleGivesUp(self) -> None:
        self.sender.emit(record(1))
        d = self.sender.idle(timeout=5)
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(self.sender.held, 1)

    def test_idleWhenNothingHeld(self) -> None:
        self.successResultOf(self.sender.idle())


class EventForwarderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.sender = RecordSender(self.reactor, 100)
        self.publisher = LogPublisher(EventForwarder(self.sender))
        self.log = Logger(observer=self.publisher, namespace="test")

    def records(self) -> list[dict[str, object]]:
        return [r for r in self.sender.buffer.pending]

    def test_failureWithTraceback(self) -> None:
        try:
            raise ValueError("kaboom")
        except ValueError:
            self.log.failure("render {method} {path} failed", method="GET", path="/x")
        [event] = self.records()
        self.assertEqual((event["kind"], event["level"], event["text"]), ("event", "critical", "render GET /x failed"))
        self.assertIn("Traceback", event["traceback"])
        self.assertIn("ValueError: kaboom", event["traceback"])

    def test_levels(self) -> None:
        self.log.debug("no")
        self.log.info("no")
        self.log.warn("careful {x}", x=1)
        self.log.error("bad")
        self.assertEqual([(r["level"], r["text"]) for r in self.records()], [("warn", "careful 1"), ("error", "bad")])

    def test_requestId(self) -> None:
        """An event about one request (a failed render) carries its id to the error log."""
        self.log.failure("render failed", failure=Failure(ValueError("x")), request_id="abc-1")
        [record] = self.records()
        self.assertEqual(record["request_id"], "abc-1")
        self.assertIn("ValueError", record["traceback"])

    def test_noLoop(self) -> None:
        """An error logged while forwarding is not forwarded again."""
        forwarder = EventForwarder(self.sender)
        calls = []

        def emitting(level: str, text: str, traceback: str | None = None, request_id: str | None = None) -> None:
            calls.append(text)
            forwarder({"log_level": LogLevel.error, "log_format": "inner"})

        self.sender.event = emitting  # type: ignore[method-assign]
        forwarder({"log_level": LogLevel.error, "log_format": "outer"})
        self.assertEqual(calls, ["outer"])


class RequestIdTests(SynchronousTestCase):
    def test_unique(self) -> None:
        a, b = RequestIds(), RequestIds()
        ids = [a.next() for _ in range(1000)] + [b.next() for _ in range(1000)]
        self.assertEqual(len(set(ids)), 2000)
        self.assertEqual(RequestIds("p").next(), "p-1")
        self.assertRegex(a.next(), r"^[0-9a-f]{12}-[0-9a-f]+$")


class ProtocolTests(SynchronousTestCase):
    def test_parseRecords(self) -> None:
        msg = Message("records", {"k": "records", "first": 3}, logchannel.encode_records([{"a": "é"}]))
        self.assertEqual(logchannel.parse_records(msg), (3, [{"a": "é"}]))

    def test_badRecords(self) -> None:
        for meta, payload in (
            ({"first": 0}, b"[]"),
            ({"first": True}, b"[]"),
            ({}, b"[]"),
            ({"first": 1}, b"{}"),
            ({"first": 1}, b"[1,"),
            ({"first": 1}, b"\xff"),
            # A raw control character in a string (strict JSON): the daemon's plain batches rely on it.
            ({"first": 1}, b'[{"kind":"access","request":"a\nb"}]'),
        ):
            msg = Message("records", {"k": "records", **meta}, payload)
            self.assertRaises(ChannelError, logchannel.parse_records, msg)

    def test_ack(self) -> None:
        self.assertEqual(logchannel.parse_ack(Message("ack", logchannel.ack_meta(7))), 7)
        for seq in (-1, "7", None, False):
            self.assertRaises(ChannelError, logchannel.parse_ack, Message("ack", {"k": "ack", "seq": seq}))


class AccessValuesTests(SynchronousTestCase):
    """L{RecordSender.access}: an access record queued as raw values is the same record as the
    JSON text C{ServiceSite.log} builds from the same request."""

    def served(self, uri: bytes, headers: dict[bytes, bytes], tls: dict[str, str] | None, host: bytes | None) -> object:
        """What C{ServiceSite.log} queues for a finished request (text, or raw values)."""
        from twisted.web.resource import Resource
        from twisted.web.test.requesthelper import DummyChannel

        from okws_twisted.service.web import ServiceRequest, ServiceSite

        clock = MemoryReactorClock()
        clock.advance(1_700_000_000.25)
        site = ServiceSite(Resource(), reactor=clock)
        site.records = RecordSender(clock, 10)
        site.request_ids = RequestIds("p")
        channel = DummyChannel()
        channel.factory = site
        channel.transport.tls = tls
        if host is not None:
            channel.okws_connection = type("Conn", (), {"host": host})()
        request = ServiceRequest(channel)
        request.method, request.uri, request.clientproto = b"GET", uri, b"HTTP/1.1"
        request.code, request.sentLength = 200, 12
        for name, value in headers.items():
            request.requestHeaders.addRawHeader(name, value)
        clock.advance(0.000125)
        site.log(request)
        [queued] = site.records.buffer.pending
        return queued

    def test_sameRecordAsTheText(self) -> None:
        cases = [
            (b"/hello?name=Ada", {b"user-agent": b"wrk/4.2.0", b"referer": b"http://example.com/"}, None, b"127.0.0.1"),
            (b"/caf\xc3\xa9?q=\"x\"\\", {b"user-agent": b"a\x01b\xff"}, {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}, None),
            (b"/", {b"host": b"Example.COM:8443"}, None, None),
        ]
        for uri, headers, tls, host in cases:
            queued = self.served(uri, headers, tls, host)
            text = queued if isinstance(queued, str) else logchannel.access_text(*queued)  # type: ignore[misc]
            values = (
                1_700_000_000.25, 1_700_000_000.250125, "192.168.1.1", b"GET", uri, b"HTTP/1.1", 200, 12, "p-1",
                [headers[b"referer"]] if b"referer" in headers else None,
                [headers[b"user-agent"]] if b"user-agent" in headers else None,
                tls_summary(tls) if tls is not None else None,
                host if host is not None else (b"example.com" if b"host" in headers else None),
            )
            self.assertEqual(logchannel.access_text(*values), text)

    def test_encodedWithItsBatch(self) -> None:
        """Queued values go out as JSON objects, in order with other records, and count
        against the buffer like any record."""
        clock = MemoryReactorClock()
        sender = RecordSender(clock, 3)
        values = (1.5, 1.75, "10.0.0.1", b"POST", b"/x", b"HTTP/1.0", 404, 0, "r-1", None, [b"ua"], None, b"h.example")
        sender.access(*values)
        sender.emit({"kind": "event", "level": "info", "text": "between"})
        sender.emit('{"kind":"access","status":200}')
        sender.access(*values)
        self.assertEqual(sender.held, 3)
        self.assertEqual(sender.buffer.dropped, 1)
        batch = sender.buffer.seal()
        assert batch is not None
        records = json.loads(batch.payload)
        self.assertEqual(
            records[0],
            {"kind": "access", "time": 1_500_000, "client": "10.0.0.1", "request": "POST /x HTTP/1.0", "status": 404,
             "bytes": 0, "request_id": "r-1", "response_time": 250_000, "user_agent": "ua", "host": "h.example"},
        )
        self.assertEqual([r["kind"] for r in records], ["access", "event", "access"])
