"""
The delay service: answers after a pause, to exercise slow requests.

C{GET /delay?ms=250} answers after 250 milliseconds (100 by default, at most
10000). While it waits the process serves other requests, which is what the
concurrency and drain tests need; if the client leaves, the timer is
cancelled.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.http import BAD_REQUEST
from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource


class Delay(ServiceResource):
    """
    Answers C{GET} after C{?ms=N} milliseconds; returns a L{Deferred}.

    @param reactor: the clock to wait on; the global reactor (looked up when a
        request arrives, so importing this module installs none) if L{None}.
        Tests pass a L{twisted.internet.task.Clock}.
    """

    # One page for every path the site routes here (/hello, /hi/, ...): the
    # service process mounts this resource at each of the service's paths.
    isLeaf = True

    defaultMilliseconds = 100
    maxMilliseconds = 10_000

    def __init__(self, reactor: IReactorTime | None = None) -> None:
        super().__init__()
        self._reactor = reactor

    def render_GET(self, request: IRequest) -> Deferred[str] | str:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        raw = (request.args.get(b"ms") or [b""])[0]
        try:
            ms = int(raw) if raw else self.defaultMilliseconds
        except ValueError:
            request.setResponseCode(BAD_REQUEST)
            return "<p>ms must be a whole number of milliseconds</p>\n"
        ms = min(max(ms, 0), self.maxMilliseconds)
        return deferLater(
            self._clock(), ms / 1000, lambda: f"<p>Waited {ms} ms.</p>\n"
        )

    def _clock(self) -> IReactorTime:
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor  # type: ignore[return-value]
        return self._reactor
