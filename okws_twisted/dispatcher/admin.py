# -*- test-case-name: tests.dispatcher.test_dispatcher -*-
"""
The admin listener, served by the dispatcher: C{/metrics} (Prometheus text) and C{/health}
(for load balancers).  OKWS had no such listener; operators of today expect both.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from okws_twisted.dispatcher.accept import Acceptor
from okws_twisted.dispatcher.metrics import render
from okws_twisted.dispatcher.pool import _count
from okws_twisted.wire.counts import RequestCounts
from okws_twisted.wire.errorpage import error_response, phrase
from okws_twisted.wire.httpframe import HeadReader, HTTPError
from okws_twisted.wire.transport import SocketTransport

if TYPE_CHECKING:
    from okws_twisted.dispatcher.dispatcher import Dispatcher


class AdminConnection:
    """One request to the admin listener: C{GET /metrics} or C{GET /health}, then close."""

    transport: SocketTransport

    def __init__(self, dispatcher: "Dispatcher") -> None:
        self._dispatcher = dispatcher
        self._reader = HeadReader(dispatcher.limits)
        self._timer: IDelayedCall | None = dispatcher.reactor.callLater(dispatcher.config.head_timeout, self._timed_out)
        self._done = False

    def makeConnection(self, transport: SocketTransport) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            head = self._reader.feed(data)
        except HTTPError as e:
            self._error(e.status, e.reason)
            return
        if head is None:
            return
        if head.method not in (b"GET", b"HEAD"):
            self._error(405, "Only GET and HEAD.", (("Allow", "GET, HEAD"),))
        elif head.path == b"/metrics":
            self._send(200, self._dispatcher.metrics(), "text/plain; version=0.0.4; charset=utf-8", head.method == b"HEAD")
        elif head.path == b"/health":
            status, text = self._dispatcher.health()
            self._send(status, text + "\n", "text/plain; charset=utf-8", head.method == b"HEAD")
        else:
            self._error(404, "The admin listener serves /metrics and /health.")

    def _send(self, status: int, body: str, content_type: str, head_only: bool) -> None:
        self._finish()
        data = body.encode("utf-8")
        headers = (
            f"HTTP/1.1 {status} {phrase(status)}\r\n".encode("latin-1")
            + self._dispatcher.stamp.fields()
            + (
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
        )
        self.transport.write(headers if head_only else headers + data)
        self.transport.close_lingering()

    def _error(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._finish()
        self.transport.write(error_response(status, message, extra_headers=headers, fields=self._dispatcher.stamp.fields()))
        self.transport.close_lingering()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done:
            self._error(408, "The request head did not arrive in time.")

    def connectionLost(self, reason: Failure) -> None:
        self._finish()


class AdminListener:
    """The admin listener's socket: each connection asks one question, then closes."""

    def __init__(self, dispatcher: "Dispatcher", sock: socket.socket) -> None:
        self._dispatcher = dispatcher
        self._acceptor = Acceptor(dispatcher.reactor, sock, self._accepted)
        self._acceptor.start()

    def _accepted(self, conn: socket.socket, peer: Any, host: Any) -> None:
        SocketTransport(self._dispatcher.reactor, conn, AdminConnection(self._dispatcher), peer, host).start()

    def close(self) -> None:
        self._acceptor.close()


def service_states(dispatcher: "Dispatcher") -> dict[str, str]:
    """Each routed service's state for health: ready, dormant (lazy, not started yet), failed or starting."""
    states = {}
    for service in dispatcher.config.services:
        pool = dispatcher.pools.get(service.name)
        if pool is None:
            continue
        if any(not link.retiring for link in pool.links.values()):
            states[service.name] = "ready"
        elif pool.failed:
            states[service.name] = "failed"
        elif dispatcher.launcher_view.get(service.name, {}).get("dormant"):
            states[service.name] = "dormant"
        else:
            states[service.name] = "starting"
    return states


def health(dispatcher: "Dispatcher") -> tuple[int, str]:
    """What a load balancer is told (C{[okws] health}): 200 or 503, and a line per problem.

    C{all}: every service has a ready instance (a lazy one not started yet
    counts: its first request starts it).  C{any}: at least one does.  A
    stopping dispatcher is never healthy.
    """
    if dispatcher.draining:
        return 503, "draining"
    states = service_states(dispatcher)
    serving = [name for name, state in states.items() if state in ("ready", "dormant")]
    problems = [f"{state}: {name}" for name, state in sorted(states.items()) if state in ("failed", "starting")]
    if dispatcher.config.health == "any":
        healthy = bool(serving)
    else:
        healthy = not problems
    return (200 if healthy else 503), "\n".join(["ok" if healthy else "unhealthy", *problems])


def exposition(dispatcher: "Dispatcher") -> str:
    """Every counter and gauge of the site, in the Prometheus text format."""
    names = {s.name for s in dispatcher.config.services}
    requests: dict[str, dict[str, RequestCounts]] = {}
    for name, totals in dispatcher.service_totals.items():
        for host, counts in totals.total().items():
            requests.setdefault(name, {}).setdefault(host, RequestCounts()).add(counts)
    for (name, host), counts in dispatcher.own_counts.items():
        requests.setdefault(name, {}).setdefault(host, RequestCounts()).add(counts)
    live = {name: [l for l in pool.links.values()] for name, pool in dispatcher.pools.items() if name in names}
    gauges = {
        "in_flight_requests": {n: sum(l.in_flight for l in ls) for n, ls in live.items()},
        "connections": {n: sum(l.connections for l in ls) for n, ls in live.items()},
        "queue_depth": {n: len(dispatcher.pools[n].queue) for n in live},
        "ready_instances": {n: sum(1 for l in ls if not l.retiring) for n, ls in live.items()},
        "failed": {n: int(dispatcher.pools[n].failed) for n in live},
    }
    counters = {
        "restarts_total": {n: _count(dispatcher.launcher_view.get(n, {}).get("restarts")) for n in names},
        "handoffs_total": {n: dispatcher.pools[n].handed_off for n in live},
        "misbehaviour_total": {n: dispatcher.pools[n].misbehaviour for n in live},
    }
    links = [l for pool in dispatcher.pools.values() for l in pool.links.values()]
    own = dispatcher.records
    site = {
        "log_records_buffered": (own.held if own is not None else 0) + sum(l.log_buffered for l in links),
        "log_records_dropped_total": (own.dropped_total if own is not None else 0)
        + dispatcher.gone_log_dropped
        + sum(l.log_dropped for l in links),
        "up": 1,
        "dispatcher_open_connections": dispatcher.open_connections,
        "dispatcher_relayed_connections": len(dispatcher.relayed),
        "dispatcher_accepting": int(not dispatcher.accepting_paused and not dispatcher.draining),
        "handoff_failures_total": dispatcher.handoff_failures,
    }
    info = {
        s.name: {"isolation": s.isolation or "connection", "hosts": " ".join(s.hosts) or "*"}
        for s in dispatcher.config.services
    }
    return render(sorted(names | set(requests)), requests, gauges, counters, site, info,
                  processes=dispatcher.process_samples, build=build_info())


def build_info() -> dict[str, str]:
    """The labels of C{okws_build_info}."""
    import platform

    import twisted

    import okws_twisted

    return {"version": okws_twisted.__version__, "twisted": twisted.__version__, "python": platform.python_version()}
