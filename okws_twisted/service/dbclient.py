# -*- test-case-name: tests.service.test_dbclient -*-
"""
A service instance's side of its db channel (its link to OKWS's database proxy).

L{DatabaseClient} is the service process's L{IDatabase}: C{self.db.NAME(...)}
ends here.  It checks each call before anything is sent (a value of a type
the channel does not carry, or a wrong parameter name, is a C{TypeError}; a
query this service was not granted is L{QueryRefused}), batches the calls
made in one reactor turn into one C{calls} message (but for a call made while
none is in flight, which leaves at once and yields this core to the proxy
thread it woke), and fires each call's Deferred with its reply, read by the
query's suffix.

The proxy may be away (crashed, being relaunched, reloaded): a call made then
waits for the next channel and its grants, at most C{query_timeout} seconds,
then fails with L{DatabaseUnavailable}.  A call already sent when its channel
dies fails at once: it may or may not have run, and it is never sent again
(the author decides whether to retry).  A graceful relaunch of the proxy
loses nothing: the old channel stays open until the calls sent on it are
answered, while new calls go to the new proxy.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Mapping

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.interfaces import IDatabase
from okws_twisted.service.database import (
    ERROR_CLASSES,
    DatabaseUnavailable,
    QueryFailed,
    QueryRefused,
    check_call,
    check_values,
    decode_result,
)
from okws_twisted.wire import dbchannel
from okws_twisted.wire.channel import ChannelError, ChannelLimits, Message, MessageChannel
from okws_twisted.wire.dbchannel import OK, UNAVAILABLE, Grant

#: How long past C{query_timeout} a sent call waits for its reply before giving up on the proxy
#: (the proxy answers every call by then: it cancels a call at C{query_timeout} after it arrived).
BACKSTOP = 2.0

#: What a lone call does right after its send (L{DatabaseClient._queue}).
_yield = os.sched_yield


class _Call:
    """One call, from its making to its answer (a class with slots: one is built per call)."""

    __slots__ = ("id", "name", "args", "kwargs", "answer", "timer", "grant", "entry", "channel", "deadline")

    def __init__(self, client: DatabaseClient, call_id: int, name: str, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> None:
        self.id = call_id
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.answer: Deferred[Any] = Deferred(lambda d: client._cancelled(self))
        self.timer: IDelayedCall | None = None
        self.grant: Grant | None = None
        self.entry = b""
        self.channel: MessageChannel | None = None
        #: When a sent call is given up on (the sweep's, not a timer per call).
        self.deadline = 0.0


@implementer(IDatabase)
class DatabaseClient:
    """The calls of one service process to its database proxy.

    @param retry_after: the C{Retry-After} of the 503 an uncaught
        L{DatabaseUnavailable} answers.
    """

    log = Logger()

    def __init__(self, reactor: Any, config: DatabaseConfig, retry_after: int = 5) -> None:
        self.reactor = reactor
        self.retry_after = retry_after
        self.configure(config)
        self._channel: MessageChannel | None = None
        self._grants: dict[str, Grant] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Call] = {}
        self._outbox: list[_Call] = []
        self._sent: dict[int, _Call] = {}
        self._flush_call: IDelayedCall | None = None
        self._sweep_call: IDelayedCall | None = None
        self._old: set[MessageChannel] = set()

    def configure(self, config: DatabaseConfig) -> None:
        """Use C{config}'s timeout and limits from now on (the site was reloaded)."""
        self.name = config.name
        self.timeout = config.query_timeout
        self.max_call_bytes = config.max_call_bytes
        self.max_result_bytes = config.max_result_bytes

    @property
    def ready(self) -> bool:
        """A channel to a proxy, and its grants: calls go out at once."""
        return self._channel is not None and self._channel.connected and self._grants is not None

    # -- IDatabase

    def call(self, query: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Deferred[Any]:
        grants = self._grants
        if grants is None:
            check_values(args, kwargs)
            call = _Call(self, next(self._ids), query, args, kwargs)
            call.timer = self.reactor.callLater(self.timeout, self._expire, call)
            self._waiting[call.id] = call
            return call.answer
        grant = grants.get(query)
        if grant is None:
            return fail(self._not_granted(query))
        params = check_call(grant, query, args, kwargs)
        call = _Call(self, next(self._ids), query, args, kwargs)
        if self._encode(call, grant, params):
            self._queue(call)  # its timer starts when it is sent, in this reactor turn
        return call.answer

    def _not_granted(self, query: str) -> QueryRefused:
        return QueryRefused("not a query this service was granted (its queries key in site.ini)", query, self.name)

    def _encode(self, call: _Call, grant: Grant, params: Any) -> bool:
        """Encode C{call} once; fail it (C{False}) if it is larger than one C{calls} message may be."""
        call.grant = grant
        call.entry = dbchannel.call_entry(call.id, call.name, params)
        if len(call.entry) + 2 > self.max_call_bytes:
            call.answer.errback(QueryRefused(
                f"the parameters are too large ({len(call.entry)} bytes; max_call_bytes is {self.max_call_bytes})",
                call.name, self.name,
            ))
            return False
        return True

    def _queue(self, call: _Call) -> None:
        """Send C{call} in this reactor turn (grants known: C{_grants} set, the channel open)."""
        if self._flush_call is None:
            if not self._sent and not self._outbox:
                # Nothing in flight: nothing to batch with yet, so no reason to wait for the end of
                # the turn (a reactor iteration, 20-30 us).  The calls that follow in this turn,
                # with this one in flight, leave together.
                channel = self._channel
                if channel is not None and channel.connected:
                    self._send(channel, [call])
                    # The send woke a proxy thread, which this VM's kernel usually runs on this
                    # core (a socket's wake-up is a "sync" one: the sender is expected to sleep
                    # soon): give it the core now, rather than after what this process does
                    # until its reactor sleeps (the rest of the page's turn, ~10-20 us, on the
                    # call's critical path).  With no other task on this core, a 1 us syscall.
                    # Only for a lone call: with calls in flight (load) nothing yields.
                    _yield()
                    return
            self._flush_call = self.reactor.callLater(0, self.flush)
        self._outbox.append(call)

    def flush(self) -> None:
        """Send every queued call: as few C{calls} messages as the limits allow."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        outbox, self._outbox = self._outbox, []
        channel = self._channel
        if channel is None or not channel.connected:
            for call in outbox:
                if call.timer is None:
                    call.timer = self.reactor.callLater(self.timeout, self._expire, call)
                self._waiting[call.id] = call
            return
        batch: list[_Call] = []
        size = 2
        for call in outbox:
            if batch and (size + len(call.entry) + 1 > self.max_call_bytes or len(batch) >= dbchannel.MAX_BATCH):
                self._send(channel, batch)
                batch, size = [], 2
            batch.append(call)
            size += len(call.entry) + 1
        if batch:
            self._send(channel, batch)

    def _send(self, channel: MessageChannel, batch: list[_Call]) -> None:
        # The bookkeeping first: the peer may run, and answer, before C{send} returns (a woken
        # process often takes the sender's core), and what runs after it waits for that.
        deadline = self.reactor.seconds() + self.timeout + BACKSTOP
        sent = self._sent
        for call in batch:
            call.channel = channel
            call.deadline = deadline
            sent[call.id] = call
        if self._sweep_call is None:
            self._arm_sweep()
        try:
            channel.send(*dbchannel.calls([c.entry for c in batch]))
        except error.ConnectionDone:
            for call in batch:  # never left: wait for the next channel
                del sent[call.id]
                call.channel = None
                if call.timer is None:
                    call.timer = self.reactor.callLater(self.timeout, self._expire, call)
                self._waiting[call.id] = call
            self._unarm_sweep()
            return
        for call in batch:
            if call.timer is not None:  # it waited for a proxy: that wait is over
                if call.timer.active():
                    call.timer.cancel()
                call.timer = None

    def _arm_sweep(self) -> None:
        """One timer for every sent call: at the deadline of the oldest (C{_sent} is in sending
        order, so deadlines only grow along it, but for a reload that shortened the timeout)."""
        if self._sweep_call is None and self._sent:
            oldest = next(iter(self._sent.values()))
            self._sweep_call = self.reactor.callLater(max(0.0, oldest.deadline - self.reactor.seconds()), self._sweep)

    def _unarm_sweep(self) -> None:
        """Nothing sent waits: no timer left behind, when a channel closes or a call is given up.

        Not when the last call in flight is answered: at a call at a time, arming and cancelling
        a timer for each cost as much as the rest of a call's bookkeeping.  The sweep then fires
        once, at most C{query_timeout} + L{BACKSTOP} after the last call left, finds nothing
        due and is not armed again.
        """
        if not self._sent and self._sweep_call is not None:
            if self._sweep_call.active():
                self._sweep_call.cancel()
            self._sweep_call = None

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.reactor.seconds()
        while self._sent:
            call = next(iter(self._sent.values()))
            if call.deadline > now:
                break
            self._expire(call)
        self._arm_sweep()

    def _expire(self, call: _Call) -> None:
        call.timer = None
        if self._waiting.pop(call.id, None) is not None or call in self._outbox:
            if call in self._outbox:
                self._outbox.remove(call)
            self.log.warn("no database proxy for [db:{db}] within query_timeout ({timeout:g}s): {query} not sent",
                          db=self.name, timeout=self.timeout, query=call.name)
            call.answer.errback(self._unavailable(
                f"the database proxy did not answer within query_timeout ({self.timeout:g}s); the call was not sent",
                call.name,
            ))
        elif self._sent.pop(call.id, None) is not None:
            self.log.error("no reply from the database proxy for {query} within {t:g}s", query=call.name,
                           t=self.timeout + BACKSTOP)
            call.answer.errback(self._unavailable(
                "no reply from the database proxy in time; the call may or may not have run", call.name
            ))

    def _unavailable(self, message: str, query: str) -> DatabaseUnavailable:
        return DatabaseUnavailable(message, query, self.name, retry_after=self.retry_after)

    def _cancelled(self, call: _Call) -> None:
        """The caller gave up (its client went away): forget the call; a reply, if any, is ignored."""
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        self._waiting.pop(call.id, None)
        if self._sent.pop(call.id, None) is not None:
            self._unarm_sweep()
        if call in self._outbox:
            self._outbox.remove(call)

    # -- the channel

    def set_channel(self, sock: socket.socket) -> None:
        """A (new) db channel to the proxy; its grants arrive first."""
        old = self._channel
        channel: MessageChannel

        def received(batch: list[Message]) -> None:
            self._received(channel, batch)

        def lost(reason: Failure) -> None:
            self._lost(channel, reason)

        channel = MessageChannel(self.reactor, sock, received, lost, name=f"db:{self.name}",
                                 limits=ChannelLimits(max_payload=dbchannel.service_limit(self.max_result_bytes)))
        self._channel = channel
        self._grants = None
        if old is not None and old.connected:
            # Calls sent on it are still answered there (the old proxy drains); new ones go here.
            if any(c.channel is old for c in self._sent.values()):
                self._old.add(old)
            else:
                old.close()
        for call in self._outbox:
            if call.timer is None:
                call.timer = self.reactor.callLater(self.timeout, self._expire, call)
            self._waiting[call.id] = call
        self._outbox = []

    def _received(self, channel: MessageChannel, batch: list[Message]) -> None:
        for msg in batch:
            try:
                if msg.kind == dbchannel.REPLIES:
                    for reply in dbchannel.parse_replies(msg):
                        self._answered(channel, reply)
                elif msg.kind == dbchannel.GRANTS and channel is self._channel and self._grants is None:
                    self._granted(dbchannel.parse_grants(msg))
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the database proxy of [db:{db}]: {error}", db=self.name, error=e)
                channel.close()
                return
        if self._old and channel in self._old and not any(c.channel is channel for c in self._sent.values()):
            self._old.discard(channel)
            channel.close()

    def _granted(self, grants: dict[str, Grant]) -> None:
        self._grants = grants
        waiting, self._waiting = self._waiting, {}
        for call in waiting.values():
            grant = grants.get(call.name)
            if grant is None:
                self._fail_waiting(call, self._not_granted(call.name))
                continue
            if call.grant != grant:
                # Made before any grants were known, or under other ones (the queries file
                # changed with a reload): check it against this proxy's.
                try:
                    params = check_call(grant, call.name, call.args, call.kwargs)
                except TypeError as e:
                    self._fail_waiting(call, e)
                    continue
                if not self._encode(call, grant, params):
                    self._fail_waiting(call, None)
                    continue
            self._queue(call)

    def _fail_waiting(self, call: _Call, reason: BaseException | None) -> None:
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if reason is not None:
            call.answer.errback(reason)

    def _answered(self, channel: MessageChannel, reply: dbchannel.Reply) -> None:
        sent = self._sent
        call = sent.get(reply.id)
        if call is None or call.channel is not channel:
            return  # its caller gave up, or a forged id: nothing waits for it
        del sent[reply.id]  # the sweep stays armed, even with nothing left in flight (L{_unarm_sweep})
        if reply.status == OK:
            assert call.grant is not None
            try:
                result = decode_result(call.grant.suffix, reply.value)
            except ValueError as e:
                call.answer.errback(QueryFailed(f"the proxy sent a malformed result: {e}", call.name, self.name))
                return
            call.answer.callback(result)
            return
        if reply.status == UNAVAILABLE:
            call.answer.errback(self._unavailable(reply.value, call.name))
        else:
            call.answer.errback(ERROR_CLASSES[reply.status](reply.value, call.name, self.name))

    def _lost(self, channel: MessageChannel, reason: Failure) -> None:
        self._old.discard(channel)
        if channel is self._channel:
            self._channel = None
            self._grants = None
            self.log.info("db channel to the proxy of [db:{db}] closed: {reason}", db=self.name,
                          reason=reason.getErrorMessage())
        for call in [c for c in self._sent.values() if c.channel is channel]:
            del self._sent[call.id]
            if call.timer is not None and call.timer.active():
                call.timer.cancel()
            call.timer = None
            call.answer.errback(self._unavailable(
                "the database proxy went away during this call; it may or may not have run", call.name
            ))
        self._unarm_sweep()

    def stats(self) -> dict[str, int]:
        return {"waiting": len(self._waiting) + len(self._outbox), "sent": len(self._sent)}
