"""
A service instance's own CPU per keep-alive request, without the rest of the machine.

On a shared machine the CPU time per request that bench/run.py reports moves with the other
tenants' load.  This drives one L{okws_twisted.service.runtime.ServiceRuntime} in this
process, with the production classes (the framer, the channel, twisted.web, the hello
resource, the access record when C{--log}), over a real socket pair, the reactor replaced by a
clock: each round feeds one request and sends its response; the client's end is drained.
Its twin, C{--peer}, times a plain C{twisted.web.server.Site} serving the same resource (as
bench/peer_twistedweb.py does, with no access log: C{Site.log} a no-op) the same way.  Best of 7.
C{--profile}: instead, cProfile of 20,000 requests (the 30 largest by own time).

    .venv/bin/python bench/instance_cpu.py [--log] [--peer] [--profile]
    PYTHONPATH=/tmp/snap .venv/bin/python bench/instance_cpu.py   # another tree's code
"""

from __future__ import annotations

import os
import socket
import sys
import time

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

ROUND = 5000
REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
PEER = IPv4Address("TCP", "127.0.0.1", 40001)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)


def okws(log: bool):  # type: ignore[no-untyped-def]
    from okws_twisted.config import parse
    from okws_twisted.service.runtime import ServiceRuntime
    from okws_twisted.wire import handoff
    from okws_twisted.wire.logsender import RecordSender

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from services.plain import Hello

    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000)
    config = parse("[okws]\nmax_requests_per_connection = 1000000000\n[service:hello]\nresource = services.plain:Hello\npaths = /hello\n", "site.ini", "/srv")
    records = RecordSender(reactor, 10**7, count=10**7) if log else None
    runtime = ServiceRuntime(reactor, config, config.services[0], 0, Hello(), records=records)
    client, server = socket.socketpair()
    runtime.adopt(handoff.Connection(1, os.dup(server.fileno()), PEER, HOST, b""))
    server.close()
    [conn] = runtime.connections

    def one() -> None:
        conn.transport._deliver(REQUEST)  # as a read delivers it (the peer's too)
        reactor.advance(0)
        if not conn.transport.connected:
            raise SystemExit("the instance closed the connection")

    def drain() -> None:
        if records is not None:
            records.buffer.seal()
            records.buffer.ack(records.buffer.next_seq)

    return one, client, drain


def peer():  # type: ignore[no-untyped-def]
    from twisted.web import server as web

    from okws_twisted.wire.transport import SocketTransport  # the same socket transport

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from services.plain import Hello  # the resource bench/peer_twistedweb.py serves

    reactor = MemoryReactorClock()
    site = web.Site(Hello(), reactor=reactor)
    # No access log, exactly as bench/peer_twistedweb.py: a stock Site without logPath still
    # formats a combined-log line per request for twisted's legacy log.
    site.log = lambda request: None  # type: ignore[method-assign]
    site.startFactory()
    client, server = socket.socketpair()
    protocol = site.buildProtocol(PEER)
    transport = SocketTransport(reactor, server, protocol, PEER, HOST)
    transport.start(b"")

    def one() -> None:
        transport._deliver(REQUEST)
        reactor.advance(0)

    return one, client, lambda: None


def main() -> None:
    one, client, drain = peer() if "--peer" in sys.argv else okws("--log" in sys.argv)
    client.setblocking(False)
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        def loop(n: int) -> None:
            for _ in range(n):
                one()
                try:
                    while client.recv(65536):
                        pass
                except BlockingIOError:
                    pass
            drain()

        loop(2000)
        profile = cProfile.Profile()
        profile.runcall(loop, 20_000)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    best = float("inf")
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(ROUND):
            one()
            try:
                while client.recv(65536):
                    pass
            except BlockingIOError:
                pass
        drain()
        best = min(best, time.process_time() - t0)
    what = "twisted.web Site" if "--peer" in sys.argv else "okws instance" + (" (access log)" if "--log" in sys.argv else "")
    print(f"{what}: {best / ROUND * 1e6:.1f} us CPU per keep-alive request (best of 7 x {ROUND}, client included)")


if __name__ == "__main__":
    main()
