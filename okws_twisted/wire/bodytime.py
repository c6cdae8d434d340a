# -*- test-case-name: tests.wire.test_bodytime -*-
"""
How long a request body may take to arrive, for whoever reads bodies from clients.

A service instance reads the bodies of the connections handed to it; the dispatcher reads the
bodies it relays to services with C{isolation = request}.  Both cut a body that stalls or
drips (L{BodyDeadline}: at most C{body_timeout} seconds between two reads, and on average at
least C{body_min_rate} bytes a second once C{body_timeout} has passed, Apache's
C{mod_reqtimeout} C{MinRate}), with one timer per body (L{BodyTimer}), so a client that drips
a body costs itself the connection, not the server its capacity.  OKWS had no body deadline.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall

__all__ = ["BodyDeadline", "BodyTimer"]


class BodyDeadline:
    """When a request body that is still arriving is cut (C{408}).

    @param timeout: C{body_timeout}: the longest pause between two reads,
        and the grace before the rate floor applies.
    @param min_rate: C{body_min_rate}, bytes a second (C{0}: no floor).
    @param now: when the request head was complete.
    """

    def __init__(self, timeout: float, min_rate: float, now: float) -> None:
        self.timeout = timeout
        self.min_rate = min_rate
        self.started = now
        self.last = now
        self.received = 0

    def arrived(self, size: int, now: float) -> None:
        """C{size} bytes of body were read at C{now}."""
        self.received += size
        self.last = now

    def deadline(self) -> float:
        """The time at which, if nothing more arrives, the body is cut."""
        stall = self.last + self.timeout
        if not self.min_rate:
            return stall
        return min(stall, self.started + self.timeout + self.received / self.min_rate)

    def expired(self, now: float) -> str | None:
        """Why the body is cut at C{now} (the 408's message), or L{None} if it is not."""
        if now + 1e-6 < self.deadline():
            return None
        if now + 1e-6 >= self.last + self.timeout:
            return "The request body stopped arriving."
        return "The request body arrived too slowly."


class BodyTimer:
    """One request body's deadline as one timer, armed at its head.

    The reads themselves never touch the timer (they only count, L{arrived}); when it fires
    early (bytes arrived since) it is moved to the new deadline, so a fast body costs one timer
    however many reads it takes.
    """

    def __init__(self, reactor: Any, timeout: float, min_rate: float, expired: Callable[[str], None]) -> None:
        """
        @param expired: called once, with the 408's message, if the body is cut.
        """
        self._reactor = reactor
        self._expired = expired
        self.deadline = BodyDeadline(timeout, min_rate, reactor.seconds())
        self._call: IDelayedCall | None = None
        self._arm()

    def arrived(self, size: int) -> None:
        """C{size} bytes of the body were read now."""
        self.deadline.arrived(size, self._reactor.seconds())

    def cancel(self) -> None:
        """The body is complete (or its connection gone)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def active(self) -> bool:
        return self._call is not None

    def _arm(self) -> None:
        delay = max(0.0, self.deadline.deadline() - self._reactor.seconds())
        self._call = self._reactor.callLater(delay, self._due)

    def _due(self) -> None:
        self._call = None
        why = self.deadline.expired(self._reactor.seconds())
        if why is None:
            self._arm()
        else:
            self._expired(why)
