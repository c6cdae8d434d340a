# -*- test-case-name: tests.tlsfront.test_front -*-
"""
The TLS front (OKWS's okssld): the only process that reads the private keys.

It accepts on the C{ssl:} listening sockets the launcher opened, terminates
TLS with pyOpenSSL through Twisted (TLS 1.2 or newer, ALPN offering
C{http/1.1}, no renegotiation, no compression) over
L{okws_twisted.wire.transport.SocketTransport} on both sides of the relay, and
cuts a client whose handshake is not done within C{tls_handshake_timeout} (and one that
has not closed within as long after the front began closing its session).  For each connection
whose handshake completed it makes a Unix socket pair, passes one end to the
dispatcher over the ``tls`` channel (a handoff ``conn`` message with the
client's address, the listener's address and the session's facts: SNI name,
cipher, version, ALPN protocol), and relays plaintext between the client's
TLS session and the other end.  From there on the dispatcher and the services
treat the socket as the client's connection.

The relay (L{okws_twisted.wire.relay.Splice}, which the dispatcher uses too)
never buffers without bound: each side is the other's streaming
producer, so a client that reads slowly fills the TLS transport's buffer,
which pauses reading from the socket pair, which (once the kernel's socket
buffer is full) makes the service's writes wait; and a service that reads
slowly pauses reading from the client the same way.

It never imports service code, jinja2 or the author API, and has no channel
to the services: only to the dispatcher, the log daemon and the launcher.
Certificates are read once, at start-up; C{okws-ctl reload} relaunches the
TLS front gracefully (the old process finishes its connections, the new one
reads the files afresh).  A C{tls:} listener's directory (L{SNIDirectory}) is
also read again when a client asks for a name it does not know.

For C{421 Misdirected Request}, the dispatcher must know which certificate
each C{tls:} listener shows for which name (L{okws_twisted.wire.certs}): the
front sends it a ``certs`` message per such listener when their channel is new
and after each reading of the directory (before the connection that caused
it), and each connection's ``conn`` names the listener and the certificate
chosen for it.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import (
    IHandshakeListener,
    IReadDescriptor,
    IOpenSSLContextFactory,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.config import Listener, SiteConfig
from okws_twisted.interfaces import IChildRole
from okws_twisted.wire import certs, handoff, limits
from okws_twisted.wire.channel import Message, MessageChannel
from okws_twisted.wire.logsender import RecordSender
from okws_twisted.wire.deadlines import Deadline, Deadlines
from okws_twisted.wire.relay import Splice
from okws_twisted.wire.transport import SocketTransport, address_of

#: The only application protocol offered: the dispatcher and services speak HTTP/1.1.
ALPN = [b"http/1.1"]
#: The address of either end of a socket pair (it has none).
_PAIR = UNIXAddress(None)


class CertificateError(Exception):
    """A listener's key or certificate could not be loaded."""


def _base_context() -> SSL.Context:
    """A server context with okws's safe defaults and ALPN, no certificate yet."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No compression (CRIME), no renegotiation (a client-driven CPU DoS), the
    # server's cipher order, and a fresh ECDH key per handshake.
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_SINGLE_ECDH_USE
    )
    ctx.set_cipher_list(b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!DSS")

    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for proto in ALPN:
            if proto in offered:
                return proto
        # None in common: go on without ALPN (HTTP/1.1 is what the client gets).
        return SSL.NO_OVERLAPPING_PROTOCOLS

    ctx.set_alpn_select_callback(select)
    return ctx


def _load(ctx: SSL.Context, key: str, chain: str) -> None:
    ctx.use_certificate_chain_file(chain.encode())
    ctx.use_privatekey_file(key.encode())
    ctx.check_privatekey()


def server_context(listener: Listener) -> SSL.Context:
    """A server context for one C{ssl:} listener: its key and certificate chain, safe defaults."""
    assert listener.private_key is not None and listener.cert_key is not None
    ctx = _base_context()
    try:
        _load(ctx, listener.private_key, listener.cert_key)
    except (SSL.Error, OSError) as e:
        raise CertificateError(f"{listener.description}: cannot load the key or certificate: {e}") from None
    return ctx


def _pem_names(path: str) -> list[str]:
    """The DNS names a PEM file serves: its first certificate's subjectAltName DNS names (as Twisted's
    C{tls:} endpoint infers them), then the file's own name without C{.pem}."""
    from cryptography import x509

    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    stem = os.path.basename(path)[: -len(".pem")]
    return [n.lower() for n in [*names, stem]]


@implementer(IOpenSSLContextFactory)
class SNIDirectory:
    """The certificates of a C{tls:} listener's directory, chosen by the client's SNI name.

    Each C{*.pem} file in the directory holds a private key and its certificate
    chain.  A file serves the DNS names of its certificate's subjectAltName and
    the name of the file itself (C{example.com.pem}, C{*.example.com.pem}).  A
    name not found as such is tried with its first label replaced by C{*}, as
    Twisted's C{tls:} endpoint does; a name still unknown makes the directory
    be read again (at most once a second) and then gets the default: the file
    C{default.pem} if there is one, else the first file in name order.  A client
    that sends no SNI name gets the default too.
    """

    log = Logger()

    def __init__(
        self, listener: Listener, clock: Callable[[], float] = lambda: 0.0, changed: Callable[[], None] = lambda: None
    ) -> None:
        """
        @param changed: called after each reading of the directory but the first (the
            certificates, and their L{ids}, are new).
        """
        assert listener.sni_dir is not None
        self.listener = listener
        self.directory = listener.sni_dir
        self._clock = clock
        self._last_read = float("-inf")
        self.by_name: dict[str, SSL.Context] = {}
        self.default: SSL.Context | None = None
        #: A number for each context: how the dispatcher tells certificates apart.
        self.ids: dict[SSL.Context, int] = {}
        self._next_id = 0
        self.reload(strict=True)
        self._changed = changed

    def reload(self, strict: bool = False) -> None:
        """Read the directory afresh; at start-up (C{strict}) a directory with no usable file is an error."""
        self._last_read = self._clock()
        by_name: dict[str, SSL.Context] = {}
        default: SSL.Context | None = None
        first: SSL.Context | None = None
        problems = []
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".pem"))
        except OSError as e:
            names = []
            problems.append(str(e))
        for name in names:
            path = os.path.join(self.directory, name)
            if not os.path.isfile(path):
                continue
            ctx = _base_context()
            try:
                _load(ctx, path, path)
                served = _pem_names(path)
            except (SSL.Error, OSError, ValueError) as e:
                problems.append(f"{path}: {e}")
                continue
            ctx.set_tlsext_servername_callback(self._servername)
            first = first or ctx
            if name == "default.pem":
                default = ctx
            for dns in served:
                by_name.setdefault(dns, ctx)
        for problem in problems:
            self.log.warn("{listener}: skipping a certificate: {problem}", listener=self.listener.description, problem=problem)
        if first is None:
            if strict:
                raise CertificateError(
                    f"{self.listener.description}: no usable .pem file (a key and its certificate chain) in {self.directory}"
                    + ("; " + "; ".join(problems) if problems else "")
                )
            return  # keep serving what was read before
        self.by_name, self.default = by_name, default or first
        ids = {}
        for ctx in [self.default, *by_name.values()]:
            if ctx not in ids:
                self._next_id += 1
                ids[ctx] = self._next_id
        self.ids = ids
        if not strict:
            self._changed()

    def table(self) -> tuple[dict[str, int], int]:
        """The names and the default as ids, for the dispatcher (L{okws_twisted.wire.certs})."""
        assert self.default is not None
        return {name: self.ids[ctx] for name, ctx in self.by_name.items()}, self.ids[self.default]

    def lookup(self, name: str) -> SSL.Context | None:
        return certs.choose(self.by_name, name)

    def _servername(self, conn: SSL.Connection) -> None:
        try:
            name = (conn.get_servername() or b"").decode("ascii", "replace")
            ctx = self.lookup(name)
            if ctx is None and self._clock() - self._last_read >= 1.0:
                self.log.info("unknown name {name!r}: reading {dir} again", name=name, dir=self.directory)
                self.reload()
                ctx = self.lookup(name)
            conn.set_context(ctx or self.default)
        except Exception:
            self.log.failure("choosing a certificate by SNI")

    def getContext(self) -> SSL.Context:
        assert self.default is not None
        return self.default


@implementer(IOpenSSLContextFactory)
class _ContextFactory:
    """Twisted's context factory interface over one prepared context."""

    def __init__(self, ctx: SSL.Context) -> None:
        self._ctx = ctx

    def getContext(self) -> SSL.Context:
        return self._ctx


class PlainSide(Protocol):
    """The TLS front's end of a socket pair: the decrypted connection as the dispatcher sees it."""

    def __init__(self, client: "TLSClient") -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        assert self.client.splice is not None
        self.client.splice.from_b(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.client.plain_lost()


@implementer(IHandshakeListener)
class TLSClient(Protocol):
    """One client's TLS session inside the front.

    States: handshaking (deadline armed) -> relaying (a socket pair end is
    with the dispatcher) -> closed.  The client's bytes after the handshake
    go to the socket pair, and the socket pair's bytes to the client.
    """

    log = Logger()

    def __init__(self, front: "TLSFront", listener: int) -> None:
        self.front = front
        #: The index of its listener among the TLS listeners.
        self.listener = listener
        self.plain: PlainSide | None = None
        #: The relay between the TLS session (C{a}) and the socket pair (C{b}).
        self.splice: Splice | None = None
        self._timer: Deadline | None = None
        self.closed = False

    def connectionMade(self) -> None:
        self.front.clients.add(self)
        # One timer sweep for all handshakes (L{Deadlines}), not a callLater per connection.
        self._timer = self.front.deadlines.call_later(self.front.config.tls_handshake_timeout, self._handshake_late)

    def _handshake_late(self) -> None:
        self._timer = None
        self.front.handshake_timeouts += 1
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tls = self.transport.getHandle()
        facts = {
            "sni": (tls.get_servername() or b"").decode("ascii", "replace"),
            "cipher": tls.get_cipher_name() or "",
            "version": tls.get_protocol_version_name() or "",
            "alpn": (self.transport.negotiatedProtocol or b"").decode("ascii", "replace"),
        }
        directory = self.front.directories.get(self.listener)
        cert = directory.ids.get(tls.get_context()) if directory is not None else None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sent = self.front.pass_on(
                theirs.fileno(), self.transport.getPeer(), self.transport.getHost(), facts, self.listener, cert
            )
        finally:
            theirs.close()
        if not sent:
            mine.close()
            self.transport.abortConnection()
            return
        # The front's end on the one transport the dispatcher and the services use too: no
        # dup of the descriptor, and writes leave at the end of the reactor's iteration with
        # no epoll registration per write (Twisted's Unix transport adds and removes a writer
        # for each).
        plain = PlainSide(self)
        self.plain = plain
        transport = SocketTransport(self.front.reactor, mine, plain, _PAIR, _PAIR)
        transport.start()
        self.splice = Splice(self.transport, transport)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.from_a(data)

    def plain_lost(self) -> None:
        """The dispatcher or a service closed the connection: close the TLS session (after what is
        buffered), and cut it if the client has not closed it within C{tls_handshake_timeout}.

        Twisted's TLS sends the front's close_notify, then waits for the client's (or for its TCP
        close) with no limit of its own: a client that does neither would keep its descriptor
        and its memory in the front for ever (and hold up a graceful stop).
        """
        if not self.closed and self.splice is not None:
            self.splice.lost(self.splice.b)
            if not self.closed and self._timer is None:
                # The closing handshake gets the opening handshake's bound, on the same sweep.
                self._timer = self.front.deadlines.call_later(self.front.config.tls_handshake_timeout, self._close_late)

    def _close_late(self) -> None:
        self._timer = None
        self.front.close_timeouts += 1
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.front.clients.discard(self)
        if self.splice is not None:
            self.splice.lost(self.splice.a)
        self.front.client_gone()


class _ClientFactory(Factory):
    def __init__(self, front: "TLSFront", listener: int) -> None:
        self.front = front
        self.listener = listener

    def buildProtocol(self, addr: Any) -> TLSClient:
        return TLSClient(self.front, self.listener)


#: Connections accepted per wakeup of a listening socket (the rest wait for the next one).
ACCEPTS_PER_WAKEUP = 64
#: Seconds accepting pauses when the process is out of descriptors or memory.
ACCEPT_PAUSE = 1.0


@implementer(IReadDescriptor)
class _Listening:
    """Accepts on one inherited C{ssl:} socket; each TLS session runs on a L{SocketTransport}.

    Twisted's TCP transport sends nothing when it is written to: it registers for writing and
    sends at the next wakeup, so each of a TLS session's flights (the server's handshake
    messages, the session tickets, the response, the close) cost an C{epoll_ctl} pair and a
    wakeup.  On L{SocketTransport} what is written in a reactor iteration leaves at its end.
    (The dispatcher's accept loop, L{okws_twisted.dispatcher.accept.Acceptor}, is the same
    loop; the front may not import the dispatcher's package.)
    """

    log = Logger()

    def __init__(self, reactor: Any, sock: socket.socket, factory: TLSMemoryBIOFactory) -> None:
        sock.setblocking(False)
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        self._host = address_of(sock.getsockname(), sock.family)
        self._factory = factory
        self._accepting = False
        self._closed = False

    def start(self) -> None:
        if not self._accepting and not self._closed:
            self._accepting = True
            self._reactor.addReader(self)

    def _pause(self) -> None:
        if self._accepting:
            self._accepting = False
            self._reactor.removeReader(self)

    def stopListening(self) -> None:
        if not self._closed:
            self._pause()
            self._closed = True
            self._sock.close()
            self._factory.doStop()

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "TLSListener"

    def connectionLost(self, reason: Failure) -> None:
        self._accepting = False

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if not self._accepting:
                return
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The socket stays readable: pause instead of spinning.
                    self.log.warn("accept failed ({error}); pausing accepts for {t}s", error=e, t=ACCEPT_PAUSE)
                    self._pause()
                    self._reactor.callLater(ACCEPT_PAUSE, self.start)
                return
            if self._family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = address_of(addr, self._family)
            protocol = self._factory.buildProtocol(peer)
            if protocol is None:
                conn.close()
                continue
            SocketTransport(self._reactor, conn, protocol, peer, self._host).start()


@implementer(IChildRole)
class TLSFront:
    """The TLS front's state: its listening ports, TLS sessions, the channel to the dispatcher."""

    log = Logger()

    def __init__(self, reactor: Any, config: SiteConfig, stopped: Callable[[], None] = lambda: None) -> None:
        self.reactor = reactor
        self.config = config
        self._stopped = stopped
        self.ports: list[Any] = []
        self.clients: set[TLSClient] = set()
        self.dispatcher: MessageChannel | None = None
        self.stopping = False
        self.passed_on = 0
        self.handshake_timeouts = 0
        #: Sessions cut because the client neither answered the front's close_notify nor closed.
        self.close_timeouts = 0
        self.refused = 0
        self._ids = 0
        self.deadlines = Deadlines(reactor)
        #: The C{tls:} listeners' directories, by index among the TLS listeners.
        self.directories: dict[int, SNIDirectory] = {}

    def listen(self, pairs: list[tuple[Listener, socket.socket]]) -> None:
        """Accept on each inherited socket with its listener's key and certificate(s).

        C{pairs} are the site's TLS listeners in order: the index is how the
        dispatcher knows the listener.
        """
        factories = [
            (sock, TLSMemoryBIOFactory(self.context_factory(l, i), False, _ClientFactory(self, i)))
            for i, (l, sock) in enumerate(pairs)
        ]
        for sock, factory in factories:
            factory.doStart()
            port = _Listening(self.reactor, sock, factory)
            port.start()
            self.ports.append(port)

    def context_factory(self, listener: Listener, index: int = 0) -> Any:
        if listener.sni_dir is not None:
            directory = SNIDirectory(listener, self.reactor.seconds, lambda: self.send_certs(index))
            self.directories[index] = directory
            return directory
        return _ContextFactory(server_context(listener))

    def send_certs(self, index: int) -> None:
        """Tell the dispatcher which certificate the C{index}-th TLS listener shows for which name."""
        channel = self.dispatcher
        if channel is None or not channel.connected:
            return
        names, default = self.directories[index].table()
        meta, payload = certs.certs_message(index, names, default)
        channel.send(meta, payload)

    def pass_on(
        self, fd: int, peer: Any, host: Any, tls: dict[str, str], listener: int = 0, cert: int | None = None
    ) -> bool:
        """Give one end of a socket pair to the dispatcher; C{False} if there is no dispatcher.

        C{cert}: the certificate chosen (for a C{tls:} listener: L{SNIDirectory.ids}).
        """
        channel = self.dispatcher
        if channel is None or not channel.connected:
            self.refused += 1
            self.log.warn("no dispatcher to pass a TLS connection to; closing it")
            return False
        self._ids += 1
        meta = handoff.connection_meta(handoff.CONN, self._ids, peer, host, tls)
        meta["listener"] = listener
        if cert is not None:
            meta["cert"] = cert
        channel.send(meta, b"", [fd])
        self.passed_on += 1
        return True

    # -- IChildRole

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel == "tls":
            old, self.dispatcher = self.dispatcher, MessageChannel(self.reactor, sock, self._from_dispatcher, name="tls:dispatcher", limits=limits.TLS_FRONT)
            if old is not None:
                old.close()
            for index in self.directories:
                self.send_certs(index)
        else:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()

    def _from_dispatcher(self, batch: list[Message]) -> None:
        for msg in batch:
            for fd in msg.fds:
                os.close(fd)
            self.log.error("unexpected {kind} message from the dispatcher", kind=msg.kind)

    def update_config(self, site: SiteConfig) -> None:
        # Listener and key changes need a restart; reload relaunches this process.
        self.config = site

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.clients),
            "passed_on": self.passed_on,
            "handshake_timeouts": self.handshake_timeouts,
            "close_timeouts": self.close_timeouts,
            "refused": self.refused,
        }

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        self.log.warn("unexpected control message {kind}", kind=kind)

    def stop(self, drain: float = 0.0, handback: bool = False) -> None:
        """Stop accepting; exit once every TLS session has ended (the launcher bounds the wait)."""
        self.stopping = True
        for port in self.ports:
            port.stopListening()
        self.ports = []
        for client in list(self.clients):
            if client.plain is None:
                client.transport.abortConnection()  # still handshaking: nothing to finish
        self.client_gone()

    def client_gone(self) -> None:
        if self.stopping and not self.clients:
            stopped, self._stopped = self._stopped, lambda: None
            stopped()


def start_role(
    reactor: Any,
    site: SiteConfig,
    meta: dict[str, Any],
    stopped: Callable[[], None],
    records: RecordSender | None = None,
) -> TLSFront:
    """The TLS front child: TLS on the C{ssl:} sockets inherited from the launcher, in listener order."""
    from okws_twisted.wire.control import FIRST_LISTEN_FD

    listeners = [l for l in site.listen if l.tls]
    count = int(meta.get("listeners", 0))
    if count != len(listeners):
        raise ValueError(f"the launcher passed {count} TLS sockets for {len(listeners)} ssl listeners")
    front = TLSFront(reactor, site, stopped)
    front.listen([(l, socket.socket(fileno=FIRST_LISTEN_FD + i)) for i, l in enumerate(listeners)])
    return front
