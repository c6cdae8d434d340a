# -*- test-case-name: tests.static.test_resource -*-
"""
A static response's body from an open file: C{sendfile} where the transport offers it, reads
elsewhere.

In an okws static pool the transport is okws's own socket transport
(L{okws_twisted.wire.transport.SocketTransport.send_file}): the bytes never enter the process.
Any other transport (the C{StringTransport} of L{okws_twisted.testing}, or twisted.web's own
TCP transport if an author mounts the resource in a plain twisted.web site) gets the file in
64 KiB reads, as a push producer that its consumer pauses and resumes, so a slow reader costs
bounded memory there too.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from okws_twisted.wire.transport import FileShrank

__all__ = ["FileShrank", "send_body"]

#: One read of the fallback sender.
READ_CHUNK = 64 * 1024
#: At most this much is read in one turn of the reactor (then the loop turns).
READS_PER_TURN = 16


def send_body(request: IRequest, fd: int, offset: int, count: int) -> "Deferred[int]":
    """Send C{count} bytes of C{fd} from C{offset} as the body of C{request}.

    The head must already be written (C{request.write(b"")}).  Progress counts in
    C{request.sentLength} (the access log's bytes) and, since twisted.web restarts its idle
    timer only on reads, restarts the connection's idle timer: a long download to a slow reader
    is not cut after C{keepalive_timeout}, though one that stops reading for that long is.
    """
    channel = request.channel
    send_file = getattr(getattr(channel, "transport", None), "send_file", None)
    if send_file is None:
        return _ReadSender(request, fd, offset, count).start()

    def progress(sent: int) -> None:
        request.sentLength += sent
        channel.resetTimeout()

    return send_file(fd, offset, count, progress)


@implementer(IPushProducer)
class _ReadSender:
    """The file in 64 KiB reads, written while the consumer wants more."""

    def __init__(self, request: Any, fd: int, offset: int, count: int) -> None:
        self.request = request
        self.fd = fd
        self.offset = offset
        self.remaining = count
        self.sent = 0
        self.paused = False
        self.stopped = False
        self.done: Deferred[int] = Deferred()
        self._call: Any = None
        self._reactor = request.channel.site.reactor

    def start(self) -> "Deferred[int]":
        """Send the first MiB now (a small file is done at once), the rest turn by turn."""
        self.request.registerProducer(self, True)
        self._run()
        return self.done

    def _schedule(self) -> None:
        if self._call is None and not self.paused and not self.stopped:
            self._call = self._reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        for _ in range(READS_PER_TURN):
            if self.paused or self.stopped:
                return
            if self.remaining == 0:
                self._finish(self.sent)
                return
            try:
                chunk = os.pread(self.fd, min(READ_CHUNK, self.remaining), self.offset)
            except OSError as e:
                self._finish(Failure(e))
                return
            if not chunk:
                self._finish(Failure(FileShrank(f"the file ended {self.remaining} bytes early")))
                return
            self.offset += len(chunk)
            self.remaining -= len(chunk)
            self.sent += len(chunk)
            self.request.write(chunk)
        self._schedule()

    def _finish(self, result: "int | Failure") -> None:
        self.stopped = True
        self.request.unregisterProducer()
        if isinstance(result, Failure):
            self.done.errback(result)
        else:
            self.done.callback(result)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.done.errback(Failure(error.ConnectionLost("the client went away")))
