"""
CPU per new connection (``Connection: close``) of the dispatcher and of a service instance, in process.

bench/run.py's CPU per request moves with the shared machine's load; this measures each okws
process's share of one new-connection request with the production classes and real system
calls, and counts only the time spent in that process's code: each side runs on its own
(uninstalled) epoll reactor, driven one iteration at a time, and only those iterations are
timed (C{time.process_time}); the other side, played by plain sockets here, is not.

``--instance``: a L{ServiceRuntime} with its handoff channel on a seqpacket socket pair.  Per
connection (untimed: a loopback TCP client connects and sends C{GET /hello} with
C{Connection: close}; the ``conn`` message with the accepted socket's fd and the head goes
down the channel), timed: the reactor iterations that receive it, acknowledge it, adopt the
socket, answer and close it (and, every 50 ms, report closed connections).

``--dispatcher``: a L{Dispatcher} on a listening loopback socket with one instance link.  Per
connection (untimed: the client connects and sends), timed: the iterations that accept, read
and route the head and send the ``conn`` message; then (untimed) the instance's side takes the
fd and acknowledges; timed: the iterations that take the acknowledgement and close the
dispatcher's copy.

``--peer``: plain C{twisted.web.server.Site} on its own listening socket, the same resource,
timed from accept to close: the whole of twisted.web's work for one such request.

    .venv/bin/python bench/newconn_cpu.py --instance [--log] | --dispatcher | --peer  [--n 3000] [--batch 1]
    .venv/bin/python bench/newconn_cpu.py --profile --instance   # cProfile of the timed part
"""

from __future__ import annotations

import array
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nConnection: close\r\n\r\n"
SITE = "[okws]\n[service:hello]\nresource = services.plain:Hello\npaths = /hello\n"
ROUNDS = 5


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
        self.reactor.iterate(0)
        if self.profile is not None:
            self.profile.disable()
        self.total += time.process_time() - t0


def _listener() -> socket.socket:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(2048)
    return lsock


def _client(addr) -> socket.socket:  # type: ignore[no-untyped-def]
    client = socket.create_connection(addr)
    client.sendall(REQUEST)
    client.setblocking(False)
    return client


def _read_response(client: socket.socket, got: list[bytes]) -> bool:
    """Untimed: what the client received; True at end of stream."""
    try:
        while True:
            data = client.recv(65536)
            if not data:
                return True
            got.append(data)
    except BlockingIOError:
        return False


def _serve_until_closed(clients: list[socket.socket], timer: Timer) -> None:
    got: dict[socket.socket, list[bytes]] = {c: [] for c in clients}
    open_ = set(clients)
    for _ in range(10000):
        timer.tick()
        for client in list(open_):
            if _read_response(client, got[client]):
                open_.discard(client)
        if not open_:
            break
    else:
        raise SystemExit("no end of stream from the server")
    for client in clients:
        client.close()
        response = b"".join(got[client])
        if not response.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected response {response[:80]!r}")


def _instance(n: int, log: bool, profile, batch: int = 1) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet.address import IPv4Address
    from twisted.internet.epollreactor import EPollReactor

    from okws_twisted.config import parse
    from okws_twisted.service.runtime import ServiceRuntime
    from okws_twisted.wire import channel, handoff
    from okws_twisted.wire.logsender import RecordSender
    from services.plain import Hello

    reactor = EPollReactor()
    config = parse(SITE, "site.ini", "/srv")
    records = RecordSender(reactor, 10**7, count=10**7) if log else None
    runtime = ServiceRuntime(reactor, config, config.services[0], 0, Hello(), records=records)
    ours, theirs = channel.socketpair()
    runtime.set_dispatcher(theirs)
    ours.setblocking(False)
    lsock = _listener()
    addr = lsock.getsockname()
    host = IPv4Address("TCP", *addr)
    timer = Timer(reactor)
    timer.profile = profile
    best = float("inf")
    conn_id = 0
    for _ in range(ROUNDS):
        timer.total = 0.0
        for _ in range(n // batch):
            clients = []
            held = []
            for _ in range(batch):
                clients.append(_client(addr))
                server, peer = lsock.accept()
                data = server.recv(65536)
                conn_id += 1
                held.append((conn_id, IPv4Address("TCP", *peer), data, server))
            # As the dispatcher sends them: a wakeup's connections in one message where it can.
            for part in _messages(handoff, held):
                if len(part) == 1:
                    conn_id, peer, data, server = part[0]
                    [dgram] = channel.encode(handoff.connection_meta(handoff.CONN, conn_id, peer, host), data)
                else:
                    meta = handoff.batch_meta([handoff.batch_entry(i, p, host, len(d)) for i, p, d, _s in part])
                    [dgram] = channel.encode(meta, b"".join(d for _i, _p, d, _s in part))
                fds = array.array("i", [s.fileno() for *_, s in part])
                ours.sendmsg([dgram], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            for *_, server in held:
                server.close()  # the fd in flight holds the socket
            _serve_until_closed(clients, timer)
            try:
                while ours.recv(65536):  # the acks (untimed: the dispatcher's work)
                    pass
            except BlockingIOError:
                pass
            if records is not None:
                records.buffer.seal()
                records.buffer.ack(records.buffer.next_seq)
        best = min(best, timer.total)
    if runtime.connections:
        raise SystemExit(f"{len(runtime.connections)} connections left open")
    return best / (n // batch * batch)


def _messages(handoff, held: list) -> list[list]:  # type: ignore[no-untyped-def]
    """C{held} split as the dispatcher sends it: one message each, or (where the tree has a
    C{conns} message) up to C{MAX_BATCH} in one."""
    size = getattr(handoff, "MAX_BATCH", 1)
    return [held[i : i + size] for i in range(0, len(held), size)]


def _dispatcher(n: int, profile, batch: int = 1) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet.epollreactor import EPollReactor

    from okws_twisted.config import parse
    from okws_twisted.dispatcher.dispatcher import Dispatcher
    from okws_twisted.wire import channel, handoff, limits

    reactor = EPollReactor()
    config = parse(SITE, "site.ini", "/srv")
    dispatcher = Dispatcher(reactor, config)
    lsock = _listener()
    addr = lsock.getsockname()
    dispatcher.listen([lsock])
    ours, theirs = channel.socketpair()
    dispatcher.add_instance("hello", 0, 4242, theirs)
    ours.setblocking(False)
    assembler = channel._Assembler(limits.handoff(config.max_head))
    timer = Timer(reactor)
    timer.profile = profile
    best = float("inf")
    closed: list[int] = []
    for _ in range(ROUNDS):
        timer.total = 0.0
        for _ in range(n // batch):
            clients = [_client(addr) for _ in range(batch)]
            ids: list[int] = []
            fds: list[int] = []
            for _ in range(10000):
                timer.tick()
                while True:
                    try:
                        data, anc, _flags, _ = ours.recvmsg(channel._RECV_SIZE, channel._ANC_SIZE)
                    except BlockingIOError:
                        break
                    msg = assembler.add(data, channel._fds_from(anc))
                    if msg is not None and msg.kind == handoff.CONN:
                        ids.append(handoff.message_id(msg))
                        fds.extend(msg.fds)
                    elif msg is not None and msg.kind == "conns":
                        ids.extend(handoff.batch_ids(msg))
                        fds.extend(msg.fds)
                if len(ids) == batch:
                    break
            else:
                raise SystemExit("the dispatcher handed nothing off")
            # The instance's side (untimed): hold the sockets, acknowledge the batch (with the
            # ones that ended since the last ack, as an instance reports them), close them.
            [dgram] = channel.encode({"k": handoff.ACK, "ids": ids, "closed": closed})
            ours.send(dgram)
            for fd in fds:
                os.close(fd)
            closed = ids
            before = dispatcher.open_connections
            for _ in range(10000):
                timer.tick()
                if dispatcher.open_connections <= before - batch:
                    break
            else:
                raise SystemExit("the dispatcher never released a connection")
            for client in clients:
                client.close()
        best = min(best, timer.total)
    return best / (n // batch * batch)


def _peer(n: int, profile, batch: int = 1) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet.epollreactor import EPollReactor
    from twisted.web import server as web

    from services.plain import Hello  # the resource bench/peer_twistedweb.py serves

    reactor = EPollReactor()
    site = web.Site(Hello(), reactor=reactor)
    site.log = lambda request: None  # no access log, as bench/peer_twistedweb.py without --access-log
    port = reactor.listenTCP(0, site, backlog=2048, interface="127.0.0.1")
    addr = ("127.0.0.1", port.getHost().port)
    timer = Timer(reactor)
    timer.profile = profile
    best = float("inf")
    for _ in range(ROUNDS):
        timer.total = 0.0
        for _ in range(n // batch):
            _serve_until_closed([_client(addr) for _ in range(batch)], timer)
        best = min(best, timer.total)
    return best / (n // batch * batch)


def main() -> None:
    args = sys.argv[1:]
    n = int(args[args.index("--n") + 1]) if "--n" in args else 3000
    batch = int(args[args.index("--batch") + 1]) if "--batch" in args else 1
    profile = None
    if "--profile" in args:
        import cProfile

        profile = cProfile.Profile()
    if "--dispatcher" in args:
        what, us = "okws dispatcher", _dispatcher(n, profile, batch)
    elif "--peer" in args:
        what, us = "twisted.web Site", _peer(n, profile, batch)
    else:
        log = "--log" in args
        what, us = "okws instance" + (" (access log)" if log else ""), _instance(n, log, profile, batch)
    print(f"{what}: {us * 1e6:.1f} us CPU per new connection (best of {ROUNDS} x {n}, {batch} at a time, timed side only)")
    if profile is not None:
        import pstats

        pstats.Stats(profile).sort_stats(sys.argv[-1] if sys.argv[-1] in ("cumtime", "tottime") else "tottime").print_stats(45)


if __name__ == "__main__":
    main()
