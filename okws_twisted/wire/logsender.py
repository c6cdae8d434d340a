# -*- test-case-name: tests.wire.test_logsender -*-
"""
The sending side of logging, in every okws process but the log daemon (OKWS's libaok log client).

Logging must not slow serving, so a sender does no formatting and no file
I/O: L{RecordSender.emit} appends a dict (or its JSON text) to a list, and a timer sends the
list as one batch (every L{FLUSH_INTERVAL} seconds, or on the next reactor
turn once L{FLUSH_COUNT} records wait).  The daemon formats and writes.

Nothing is lost while the daemon is away (killed, relaunching): a sender
keeps every record until the daemon acknowledges it, up to C{capacity}
records (``log_buffer``), and sends every unacknowledged batch again when
the launcher gives it a channel to a new daemon.  When the buffer is full,
new records are dropped and counted; the count reaches the error log as
soon as the daemon is back.  Each record gets a sequence number, so the
daemon writes a resent record only once (see L{okws_twisted.logd.journal}).
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.wire import limits, logchannel
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.logrecord import MAX_TEXT, MAX_TRACEBACK

FLUSH_INTERVAL = 0.05
FLUSH_COUNT = 256
#: How long a stopping process waits for the daemon to acknowledge its last records.
FINAL_FLUSH_TIMEOUT = 3.0


def now_us(reactor: Any) -> int:
    """The reactor's time as whole microseconds since 1970 (the records' C{time} unit)."""
    return int(reactor.seconds() * 1_000_000)


@dataclass(frozen=True)
class Batch:
    """Sealed records C{first}..C{last}, encoded once, kept until acknowledged."""

    first: int
    last: int
    payload: bytes

    @property
    def count(self) -> int:
        return self.last - self.first + 1


class RecordBuffer:
    """A sender's records, numbered, held until acknowledged, at most C{capacity} of them.

    Pure bookkeeping: L{RecordSender} adds the timer and the channel.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        #: Records not yet sealed (see L{logchannel.Record}).
        self.pending: list[logchannel.Record] = []
        self.sealed: deque[Batch] = deque()
        self.next_seq = 1
        self.held = 0
        self.dropped = 0
        self.dropped_total = 0

    def add(self, record: logchannel.Record) -> bool:
        """Keep C{record}; when full, drop it and count the drop (C{False})."""
        if self.held >= self.capacity:
            self.dropped += 1
            self.dropped_total += 1
            return False
        self.pending.append(record)
        self.held += 1
        return True

    def seal(self) -> Batch | None:
        """Number and encode the pending records as the next batch."""
        if not self.pending:
            return None
        first = self.next_seq
        batch = Batch(first, first + len(self.pending) - 1, logchannel.encode_records(self.pending))
        self.pending = []
        self.next_seq = batch.last + 1
        self.sealed.append(batch)
        return batch

    def ack(self, seq: int) -> None:
        """Forget every batch whose records are all at or below C{seq}."""
        while self.sealed and self.sealed[0].last <= seq:
            self.held -= self.sealed.popleft().count

    def take_dropped(self) -> int:
        """The drops not yet reported, if there is room to report them now (else 0)."""
        if not self.dropped or self.held >= self.capacity:
            return 0
        dropped, self.dropped = self.dropped, 0
        return dropped


class RecordSender:
    """A process's log client: buffers records and sends them to the log daemon in batches."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        capacity: int,
        interval: float = FLUSH_INTERVAL,
        count: int = FLUSH_COUNT,
    ) -> None:
        self.reactor = reactor
        self.buffer = RecordBuffer(capacity)
        self.interval = interval
        self.count = count
        self.channel: MessageChannel | None = None
        self._timer: IDelayedCall | None = None
        self._timer_soon = False
        self._idle: list[defer.Deferred[None]] = []

    # -- producing records

    def emit(self, record: logchannel.Record) -> None:
        """Queue one record (see L{okws_twisted.logd.format} for the fields): a dict, its JSON text,
        or an access record's raw values (L{logchannel.AccessValues}, as L{access} queues them)."""
        if not self.buffer.add(record):
            return
        if len(self.buffer.pending) >= self.count:
            if not self._timer_soon:
                self._cancel_timer()
                self._timer_soon = True
                self._timer = self.reactor.callLater(0, self.flush)
        elif self._timer is None:
            self._timer = self.reactor.callLater(self.interval, self.flush)

    def access(
        self,
        started: float,
        now: float,
        client: str,
        method: bytes,
        uri: bytes,
        proto: bytes,
        status: int,
        sent: int,
        request_id: str,
        referer: Sequence[bytes] | None,
        agent: Sequence[bytes] | None,
        tls: str | None,
        host: bytes | None,
    ) -> None:
        """Queue a service's access record as its raw values (see L{logchannel.access_text} for
        each): they become JSON text when the batch is sealed, all of a batch in one loop, which
        costs the request path less than building the text as each response ends."""
        self.emit((started, now, client, method, uri, proto, status, sent, request_id, referer, agent, tls, host))

    def event(self, level: str, text: str, traceback: str | None = None, request_id: str | None = None) -> None:
        """Queue an error-log event (cut to the daemon's limits, so a batch stays bounded)."""
        record: dict[str, Any] = {"kind": "event", "time": now_us(self.reactor), "level": level, "text": text[:MAX_TEXT]}
        if traceback:
            record["traceback"] = traceback[-MAX_TRACEBACK:]
        if request_id:
            record["request_id"] = request_id[:MAX_TEXT]
        self.emit(record)

    @property
    def held(self) -> int:
        """Records not yet acknowledged by the daemon."""
        return self.buffer.held

    @property
    def dropped_total(self) -> int:
        """Records dropped since this process started (for the metrics)."""
        return self.buffer.dropped_total

    # -- sending

    def flush(self) -> None:
        """Send what is pending now."""
        self._cancel_timer()
        batch = self.buffer.seal()
        if batch is not None:
            self._send(batch)

    def _send(self, batch: Batch) -> None:
        channel = self.channel
        if channel is None or not channel.connected:
            return
        try:
            channel.send(logchannel.records_meta(batch.first), batch.payload)
        except error.ConnectionDone:
            pass

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        self._timer_soon = False
        if timer is not None and timer.active():
            timer.cancel()

    def attach(self, sock: socket.socket) -> MessageChannel:
        """A (new) channel to the log daemon: send every unacknowledged record on it."""
        old = self.channel
        self.channel = MessageChannel(self.reactor, sock, self._received, self._lost, name="log", limits=limits.LOG_SENDER)
        if old is not None:
            old.close()
        self._cancel_timer()
        self.buffer.seal()
        for batch in list(self.buffer.sealed):
            self._send(batch)
        return self.channel

    def _lost(self, reason: Failure) -> None:
        if self.channel is not None and not self.channel.connected:
            self.channel = None

    def _received(self, batch: list[Message]) -> None:
        for msg in batch:
            msg.close_fds()
            try:
                if msg.kind != logchannel.ACK:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
                self.buffer.ack(logchannel.parse_ack(msg))
            except ChannelError as e:
                self.log.warn("bad message from the log daemon: {error}", error=e)
        dropped = self.buffer.take_dropped()
        if dropped:
            self.emit(
                {"kind": "dropped", "time": now_us(self.reactor), "count": dropped, "capacity": self.buffer.capacity}
            )
        if self.buffer.held == 0:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def idle(self, timeout: float = FINAL_FLUSH_TIMEOUT) -> defer.Deferred[None]:
        """Send what is pending; fire once the daemon has acknowledged everything,
        or after C{timeout} seconds, whichever comes first (never fails)."""
        self.flush()
        if self.buffer.held == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)

        def expire() -> None:
            if d in self._idle:
                self._idle.remove(d)
                d.callback(None)

        call = self.reactor.callLater(timeout, expire)
        d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
        return d


_FORWARDED = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class EventForwarder:
    """A twisted.logger observer that sends a process's warnings and errors to the error log.

    A service's failed render is logged by L{okws_twisted.service.resource} with
    C{log.failure}; this turns such events (and any other at level warn or
    above) into C{event} records with the traceback, and the event's
    C{request_id} field, if any, so the id a user reports finds the traceback.
    """

    def __init__(self, sender: RecordSender) -> None:
        self.sender = sender
        self._busy = False

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level not in _FORWARDED or self._busy:
            return
        self._busy = True
        try:
            text = formatEvent(event)
            failure = event.get("log_failure")
            traceback = failure.getTraceback() if isinstance(failure, Failure) else None
            if isinstance(failure, Failure) and not text:
                text = failure.getErrorMessage()
            request_id = event.get("request_id")
            self.sender.event(level.name, text, traceback, request_id if isinstance(request_id, str) else None)
        finally:
            self._busy = False


class RequestIds:
    """Request ids: a random per-process prefix and a counter, e.g. C{"3f9a0c1b2e4d-1a"}.

    okws makes every id itself (a client-sent X-Request-Id is not used), so an
    id in the logs was never chosen by a client.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else os.urandom(6).hex()
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self._count):x}"
