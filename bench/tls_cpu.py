"""
CPU per new TLS connection of the TLS front, against twisted.web terminating TLS itself, in process.

bench/run.py ``--tls`` reports CPU per request of whole processes on a shared machine; this
measures the TLS front's own share of one new connection (``Connection: close``, a full
handshake, no resumption, as wrk does) with the production classes
(L{okws_twisted.tlsfront.front.TLSFront}) and real system calls, and counts only the time spent
in the front: it runs on its own (uninstalled) epoll reactor, driven one wakeup at a time, and
only those wakeups are timed (C{time.process_time}).  The client (the stdlib's C{ssl} on a
loopback TCP socket) and the dispatcher's side (a plain socket on the ``tls`` channel that takes
each ``conn`` message and its end of the socket pair, reads the request there and answers it with
a canned response, then closes) are untimed.

``--peer``: C{twisted.web.server.Site} serving the same resource over C{listenSSL} with
C{PrivateCertificate.options()} (as bench/peer_twistedweb.py ``--tls-key``), timed from accept to
close: the whole of twisted.web's work for one such request, handshake included.  The difference
is what the front adds to the handshake and the TLS records both do.

``--floor``: Twisted's TLS over its TCP transport with a protocol that writes the canned
response and closes (no HTTP): what any Twisted TLS server spends per connection; the front's
excess over it is the relay hop (socket pair, handoff, the plaintext both ways).

The certificate is RSA 2048, as bench/run.py ``--tls`` makes; ``--ec`` uses ECDSA P-256 instead,
whose handshake costs a fraction of RSA's signature, so what the front adds to it stands out
from the noise of a shared machine.

    .venv/bin/python bench/tls_cpu.py [--peer | --floor] [--n 300] [--ec]
    .venv/bin/python bench/tls_cpu.py --profile [tottime|cumtime]   # cProfile of the timed part
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nConnection: close\r\n\r\n"
_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Hello</title></head>"
    b"<body><p>Hello, world!</p></body></html>\n"
)
#: What the dispatcher's side answers (the hello page, as twisted.web sends it).
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Okws-Pid: 4242\r\n"
    b"Date: Sat, 05 Dec 2026 02:00:00 GMT\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\nServer: TwistedWeb/24.11.0\r\n\r\n" + _BODY
)
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SPINS = 20000


class Timer:
    """Sums the process CPU time of the timed reactor wakeups (events, then timers), and apart
    the part spent in OpenSSL's handshake calls (the same for both servers, and the noisiest)."""

    def __init__(self, reactor) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.total = 0.0
        self.handshake = 0.0
        self.profile = None
        from OpenSSL import SSL

        do_handshake = SSL.Connection.do_handshake
        timer = self

        def timed(conn):  # type: ignore[no-untyped-def]
            t0 = time.process_time()
            try:
                return do_handshake(conn)
            finally:
                timer.handshake += time.process_time() - t0

        SSL.Connection.do_handshake = timed  # type: ignore[method-assign]

    def tick(self) -> None:
        t0 = time.process_time()
        if self.profile is not None:
            self.profile.enable()
        self.reactor.doIteration(0)
        self.reactor.runUntilCurrent()
        if self.profile is not None:
            self.profile.disable()
        self.total += time.process_time() - t0


def _certificate(directory: str, ec: bool = False) -> tuple[str, str]:
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    kind = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if ec else ["-newkey", "rsa:2048"]
    subprocess.run(
        ["openssl", "req", "-x509", *kind, "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return key, cert


class _Client:
    """One TLS client connection, driven without blocking between the server's wakeups."""

    def __init__(self, addr, ctx: ssl.SSLContext) -> None:  # type: ignore[no-untyped-def]
        raw = socket.create_connection(addr)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setblocking(False)
        self.tls = ctx.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="127.0.0.1")
        self.state = "handshake"
        self.got = b""

    def step(self) -> bool:
        """Advance; C{True} once the response is complete and the server closed."""
        try:
            if self.state == "handshake":
                self.tls.do_handshake()
                self.tls.sendall(REQUEST)
                self.state = "reading"
            while True:
                data = self.tls.recv(65536)
                if not data:
                    session = self.tls.session
                    self.ticket = session is not None and session.has_ticket
                    self.tls.close()
                    return True
                self.got += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (ssl.SSLEOFError, ConnectionResetError):
            self.tls.close()
            return True


def _run_clients(addr, ctx, n: int, timer: Timer, between=lambda: None) -> None:  # type: ignore[no-untyped-def]
    for _ in range(n):
        client = _Client(addr, ctx)
        for _ in range(SPINS):
            timer.tick()
            between()
            if client.step():
                break
        else:
            raise SystemExit(f"no end of the connection (state {client.state}, got {client.got[:80]!r})")
        if not client.got.startswith(b"HTTP/1.1 200 ") or not client.got.endswith(_BODY):
            raise SystemExit(f"unexpected response {client.got[:120]!r}")
        if os.environ.get("SHOW_TICKETS"):
            print("session ticket:", getattr(client, "ticket", None))


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _front(n: int, profile, key: str, cert: str) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet.epollreactor import EPollReactor

    from okws_twisted.config import Listener, parse
    from okws_twisted.tlsfront.front import TLSFront
    from okws_twisted.wire import channel, handoff, limits

    reactor = EPollReactor()
    config = parse("[okws]\n[service:hello]\nresource = services.plain:Hello\npaths = /hello\n", "site.ini", "/srv")
    front = TLSFront(reactor, config)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(2048)
    addr = lsock.getsockname()
    front.listen([(Listener(kind="tcp", port=addr[1], private_key=key, cert_key=cert), lsock)])
    ours, theirs = channel.socketpair()
    front.peer("tls", {}, theirs)
    ours.setblocking(False)
    assembler = channel._Assembler(limits.handoff(16384))
    pairs: dict[socket.socket, bytes] = {}

    def dispatcher_side() -> None:
        """Untimed: take the pairs passed on, answer each request, close."""
        while True:
            try:
                data, anc, _flags, _ = ours.recvmsg(channel._RECV_SIZE, channel._ANC_SIZE)
            except BlockingIOError:
                break
            msg = assembler.add(data, channel._fds_from(anc))
            if msg is not None:
                assert msg.kind == handoff.CONN, msg.kind
                end = socket.socket(fileno=msg.fds[0])
                end.setblocking(False)
                pairs[end] = b""
        for end in list(pairs):
            try:
                pairs[end] += end.recv(65536)
            except BlockingIOError:
                continue
            if pairs[end].endswith(b"\r\n\r\n"):
                assert pairs[end] == REQUEST, pairs[end]
                end.sendall(RESPONSE)
                end.close()
                del pairs[end]

    timer = Timer(reactor)
    ctx = _client_context()
    _run_clients(addr, ctx, 20, timer, dispatcher_side)  # warm up (untimed)
    timer.profile = profile
    best = (float("inf"), 0.0)
    for _ in range(ROUNDS):
        timer.total = timer.handshake = 0.0
        _run_clients(addr, ctx, n, timer, dispatcher_side)
        best = min(best, (timer.total - timer.handshake, timer.handshake))
    for _ in range(100):
        timer.tick()
    if front.clients:
        raise SystemExit(f"{len(front.clients)} TLS sessions left open")
    return best[0] / n, best[1] / n


def _peer(n: int, profile, key: str, cert: str) -> float:  # type: ignore[no-untyped-def]
    from twisted.internet import ssl as tssl
    from twisted.internet.epollreactor import EPollReactor
    from twisted.web import server as web

    from services.plain import Hello

    reactor = EPollReactor()
    site = web.Site(Hello(), reactor=reactor)
    site.log = lambda request: None  # no access log
    with open(key, "rb") as f, open(cert, "rb") as g:
        options = tssl.PrivateCertificate.loadPEM(f.read() + g.read()).options()
    port = reactor.listenSSL(0, site, options, backlog=2048, interface="127.0.0.1")
    addr = ("127.0.0.1", port.getHost().port)
    timer = Timer(reactor)
    ctx = _client_context()
    _run_clients(addr, ctx, 20, timer)
    timer.profile = profile
    best = (float("inf"), 0.0)
    for _ in range(ROUNDS):
        timer.total = timer.handshake = 0.0
        _run_clients(addr, ctx, n, timer)
        best = min(best, (timer.total - timer.handshake, timer.handshake))
    return best[0] / n, best[1] / n


def _floor(n: int, profile, key: str, cert: str) -> float:  # type: ignore[no-untyped-def]
    """Twisted's TLS over TCP with a protocol that answers the canned response and closes."""
    from twisted.internet import ssl as tssl
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory, Protocol

    class Canned(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(RESPONSE)
            self.transport.loseConnection()

    reactor = EPollReactor()
    with open(key, "rb") as f, open(cert, "rb") as g:
        options = tssl.PrivateCertificate.loadPEM(f.read() + g.read()).options()
    port = reactor.listenSSL(0, Factory.forProtocol(Canned), options, backlog=2048, interface="127.0.0.1")
    addr = ("127.0.0.1", port.getHost().port)
    timer = Timer(reactor)
    ctx = _client_context()
    _run_clients(addr, ctx, 20, timer)
    timer.profile = profile
    best = (float("inf"), 0.0)
    for _ in range(ROUNDS):
        timer.total = timer.handshake = 0.0
        _run_clients(addr, ctx, n, timer)
        best = min(best, (timer.total - timer.handshake, timer.handshake))
    return best[0] / n, best[1] / n


def main() -> None:
    args = sys.argv[1:]
    n = int(args[args.index("--n") + 1]) if "--n" in args else 300
    profile = None
    if "--profile" in args:
        import cProfile

        profile = cProfile.Profile()
    directory = tempfile.mkdtemp()
    try:
        key, cert = _certificate(directory, ec="--ec" in args)
        if "--floor" in args:
            what, (us, hs) = "Twisted TLS, a canned answer", _floor(n, profile, key, cert)
        elif "--peer" in args:
            what, (us, hs) = "twisted.web Site over TLS", _peer(n, profile, key, cert)
        else:
            what, (us, hs) = "okws TLS front", _front(n, profile, key, cert)
    finally:
        shutil.rmtree(directory)
    print(
        f"{what}: {(us + hs) * 1e6:.0f} us CPU per new TLS connection, {us * 1e6:.0f} us outside OpenSSL's "
        f"handshake calls (best of {ROUNDS} x {n}, timed side only)"
    )
    if profile is not None:
        import pstats

        key_ = sys.argv[-1] if sys.argv[-1] in ("cumtime", "tottime") else "tottime"
        pstats.Stats(profile).sort_stats(key_).print_stats(int(os.environ.get("TOP", "40")))


if __name__ == "__main__":
    main()
