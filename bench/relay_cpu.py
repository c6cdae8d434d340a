"""
CPU per keep-alive request of the dispatcher's relay (C{isolation = request}), in process.

bench/run.py's ``--isolation request`` figures move with the shared machine's load; this measures
the dispatcher's share of one relayed keep-alive request with the production classes
(L{okws_twisted.dispatcher.dispatcher.Dispatcher}, L{okws_twisted.dispatcher.relay}) and real
system calls, and counts only the time the dispatcher spends: it runs on its own (uninstalled)
epoll reactor, driven one iteration at a time, and only those iterations are timed
(C{time.process_time}).  The other sides are plain sockets, untimed: loopback TCP clients that
send C{GET /hello} and read the response, and the service instance's side, which takes the
``conn`` message with its end of each relay's socket pair, acknowledges it, and answers every
request on the pair with a canned response (the bytes twisted.web sends for the hello page).

Set-up (untimed): C{--conns} clients connect and their first requests are relayed.  Per round
of requests (timed: the dispatcher's iterations only), for each connection at once: the
instance's side writes the response to the pair, the dispatcher relays it to the client; the
client sends its next request, the dispatcher frames it and relays it to the pair.  With
C{--conns 1} that is one request per wakeup; more connections put several in one
C{epoll_wait}, as under C{wrk -c50}.

    .venv/bin/python bench/relay_cpu.py [--n 3000] [--conns 1]
    .venv/bin/python bench/relay_cpu.py --profile [tottime|cumtime]   # cProfile of the timed part

C{--instance}: the other side, a service instance's CPU per relayed request
(L{okws_twisted.service.runtime.ServiceRuntime} serving the hello page on its own uninstalled
epoll reactor, timed the same way), over C{--conns} relay pairs, each sent a request per round,
so C{--conns} requests reach it per wakeup; C{--tcp}: the same over loopback TCP connections, as
C{isolation = connection} serves them.  Where the instance's time goes when the dispatcher hands
it requests one at a time rather than together.

    .venv/bin/python bench/relay_cpu.py --instance [--tcp] [--conns 1]
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Hello</title></head>"
    b"<body><p>Hello, world!</p></body></html>\n"
)
#: What the instance (twisted.web serving services.plain:Hello) writes for one request.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"X-Okws-Pid: 4242\r\n"
    b"Date: Sat, 05 Dec 2026 02:00:00 GMT\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n"
    b"Server: TwistedWeb/24.11.0\r\n"
    b"\r\n" + _BODY
)
SITE = (
    "[okws]\n"
    "[service:hello]\nresource = services.plain:Hello\npaths = /hello\nisolation = request\n"
)
ROUNDS = 5
SPINS = 10000


class Timer:
    """Sums the process CPU time of the timed reactor iterations."""

    def __init__(self, reactor) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.total = 0.0
        self.profile = None

    def tick(self) -> None:
        t0 = time.process_time()
        if self.profile is not None:
            self.profile.enable()
        # One wakeup of the reactor's main loop: the events, then the timers (among them the
        # sends batched while reading), so each wakeup polls once, as under reactor.run().
        self.reactor.doIteration(0)
        self.reactor.runUntilCurrent()
        if self.profile is not None:
            self.profile.disable()
        self.total += time.process_time() - t0


def _drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return out
        if not data:
            raise SystemExit("a connection closed unexpectedly")
        out += data


def _until(timer: Timer, socks: list[socket.socket], complete: Callable[[bytes], bool], what: str) -> None:
    """Tick the side under test until what each of C{socks} received is C{complete}."""
    got = {s: b"" for s in socks}
    waiting = set(socks)
    for _ in range(SPINS):
        timer.tick()
        for s in list(waiting):
            got[s] += _drain(s)
            if complete(got[s]):
                waiting.discard(s)
        if not waiting:
            return
    raise SystemExit(f"{what}: nothing after {SPINS} iterations")


def _exactly(want: bytes, what: str) -> Callable[[bytes], bool]:
    """Complete once C{want} arrived, and nothing else."""

    def complete(got: bytes) -> bool:
        if len(got) < len(want):
            return False
        if got != want:
            raise SystemExit(f"{what}: unexpected {got[:120]!r}")
        return True

    return complete


def _whole_response(got: bytes) -> bool:
    """Complete once a whole 200 response arrived (its length from its head)."""
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    if not head.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"the instance answered {head[:60]!r}")
    return len(body) >= int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])


def run(n: int, conns: int, profile) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet.epollreactor import EPollReactor

    from okws_twisted.config import parse
    from okws_twisted.dispatcher.dispatcher import Dispatcher
    from okws_twisted.wire import channel, handoff, limits

    reactor = EPollReactor()
    config = parse(SITE, "site.ini", "/srv")
    dispatcher = Dispatcher(reactor, config)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    dispatcher.listen([lsock])
    ours, theirs = channel.socketpair()
    dispatcher.add_instance("hello", 0, 4242, theirs)
    ours.setblocking(False)
    assembler = channel._Assembler(limits.handoff(config.max_head))
    timer = Timer(reactor)

    # Set-up (untimed): the clients connect, their first requests come as relays.
    clients = [socket.create_connection(lsock.getsockname()) for _ in range(conns)]
    for client in clients:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sendall(REQUEST)
        client.setblocking(False)
    ends: list[socket.socket] = []
    for _ in range(SPINS):
        timer.tick()
        while True:
            try:
                data, anc, _flags, _ = ours.recvmsg(channel._RECV_SIZE, channel._ANC_SIZE)
            except BlockingIOError:
                break
            msg = assembler.add(data, channel._fds_from(anc))
            if msg is None:
                continue
            assert msg.kind == handoff.CONN and msg.meta.get("relay"), msg.meta
            assert msg.payload == REQUEST, msg.payload
            [dgram] = channel.encode({"k": handoff.ACK, "ids": [handoff.message_id(msg)], "closed": []})
            ours.send(dgram)
            end = socket.socket(fileno=msg.fds[0])
            end.setblocking(False)
            ends.append(end)
        if len(ends) == conns:
            break
    else:
        raise SystemExit("the dispatcher relayed nothing")
    for _ in range(50):
        timer.tick()  # the acknowledgements: the relays start
    if len(dispatcher.relayed) != conns:
        raise SystemExit(f"{len(dispatcher.relayed)} relays, not {conns}")
    # Clients and pair ends in the same order: relay i joins clients[i] and some end; the
    # canned exchange is the same for all, so which end is which does not matter.

    timer.profile = profile

    def exchange() -> None:
        for end in ends:
            end.send(RESPONSE)
        _until(timer, clients, _exactly(RESPONSE, "the client"), "the client")
        for client in clients:
            client.send(REQUEST)
        _until(timer, ends, _exactly(REQUEST, "the instance"), "the instance")

    per_request = _best_per_request(timer, n, conns, exchange)
    for s in clients + ends:
        s.close()
    return per_request


def run_instance(n: int, conns: int, tcp: bool, profile, log: bool = False) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet.address import IPv4Address
    from twisted.internet.epollreactor import EPollReactor

    from okws_twisted.config import parse
    from okws_twisted.service.runtime import ServiceRuntime
    from okws_twisted.wire import handoff
    from services.plain import Hello

    reactor = EPollReactor()
    config = parse(
        "[okws]\nmax_requests_per_connection = 1000000000\n"
        "[service:hello]\nresource = services.plain:Hello\npaths = /hello\n",
        "site.ini",
        "/srv",
    )
    records = None
    if log:
        from okws_twisted.wire.logsender import RecordSender

        # Records gathered and sealed (encoded) as with a daemon; no channel, so never sent and
        # never acknowledged: a capacity that never fills.
        records = RecordSender(reactor, 10**9)
    runtime = ServiceRuntime(reactor, config, config.services[0], 0, Hello(), records=records)
    peer, host = IPv4Address("TCP", "127.0.0.1", 40001), IPv4Address("TCP", "127.0.0.1", 8080)
    clients = []
    for i in range(conns):
        if tcp:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname())
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server, _ = listener.accept()
            listener.close()
        else:
            client, server = socket.socketpair()
        runtime.adopt(handoff.Connection(i + 1, os.dup(server.fileno()), peer, host, b"", relay=not tcp))
        server.close()
        client.setblocking(False)
        clients.append(client)
    timer = Timer(reactor)
    timer.profile = profile

    def exchange() -> None:
        for client in clients:
            client.send(REQUEST)
        _until(timer, clients, _whole_response, "the instance")

    per_request = _best_per_request(timer, n, conns, exchange)
    for client in clients:
        client.close()
    return per_request


def _best_per_request(timer: Timer, n: int, conns: int, exchange: Callable[[], None]) -> float:
    """Seconds of timed CPU per request: C{exchange} (one request on each of C{conns}
    connections) repeated for about C{n} requests, the best of L{ROUNDS} such runs."""
    best = float("inf")
    rounds = max(1, n // conns)
    for _ in range(ROUNDS):
        timer.total = 0.0
        for _ in range(rounds):
            exchange()
        best = min(best, timer.total)
    return best / (rounds * conns)


def main() -> None:
    args = sys.argv[1:]
    n = int(args[args.index("--n") + 1]) if "--n" in args else 3000
    conns = int(args[args.index("--conns") + 1]) if "--conns" in args else 1
    profile = None
    if "--profile" in args:
        import cProfile

        profile = cProfile.Profile()
    if "--instance" in args:
        tcp = "--tcp" in args
        us = run_instance(n, conns, tcp, profile, "--log" in args)
        print(
            f"okws instance: {us * 1e6:.1f} us CPU per keep-alive request over "
            f"{'TCP (isolation = connection)' if tcp else 'relay pairs (isolation = request)'} "
            f"(best of {ROUNDS} x {n}, {conns} request(s) per wakeup, instance only"
            f"{', access records on' if '--log' in args else ''})"
        )
    else:
        us = run(n, conns, profile)
        print(
            f"okws dispatcher relay: {us * 1e6:.1f} us CPU per keep-alive request "
            f"(best of {ROUNDS} x {n}, {conns} connection(s), dispatcher only)"
        )
    if profile is not None:
        import pstats

        key = sys.argv[-1] if sys.argv[-1] in ("cumtime", "tottime") else "tottime"
        pstats.Stats(profile).sort_stats(key).print_stats(int(os.environ.get("TOP", "40")))


if __name__ == "__main__":
    main()
