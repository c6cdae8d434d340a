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
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from okws_twisted.wire.transport import FileShrank

__all__ = ["FileShrank", "send_body"]

#: One read of the fallback sender.
READ_CHUNK = 64 * 1024
#: At most this much is read in one turn of the reactor (then the loop turns).
READS_PER_TURN = 16
log = Logger()


def send_body(request: IRequest, fd: int, offset: int, count: int, stall: float = 60.0) -> "Deferred[int]":
    """Send C{count} bytes of C{fd} from C{offset} as the body of C{request}.

    The head must already be written (C{request.write(b"")}).  Progress counts in
    C{request.sentLength} (the access log's bytes).  twisted.web turns its idle timer off while
    a request is answered, so a client that stops reading a large file would hold its
    connection for ever: here a send that makes no progress for C{stall} seconds aborts the
    connection (nginx's C{send_timeout}); a download that keeps moving, however slowly, is
    never cut.
    """
    channel = request.channel
    reactor = channel.site.reactor

    def stalled() -> None:
        log.info("a client read nothing of {path} for {stall}s; closing its connection",
                 path=request.path.decode("latin-1"), stall=stall)
        channel.transport.abortConnection()

    timer = reactor.callLater(stall, stalled)

    def moved(sent: int) -> None:
        if timer.active():
            timer.reset(stall)

    def progress(sent: int) -> None:
        # Bytes sendfile moved never pass through request.write, which counts the others.
        request.sentLength += sent
        moved(sent)

    def done(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    send_file = getattr(getattr(channel, "transport", None), "send_file", None)
    if send_file is None:
        sending = _ReadSender(request, fd, offset, count, moved).start()
    else:
        sending = send_file(fd, offset, count, progress)
    return sending.addBoth(done)


@implementer(IPushProducer)
class _ReadSender:
    """The file in 64 KiB reads, written while the consumer wants more."""

    def __init__(self, request: Any, fd: int, offset: int, count: int, progress: Callable[[int], None]) -> None:
        self.request = request
        self.progress = progress
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
            self.progress(len(chunk))
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
