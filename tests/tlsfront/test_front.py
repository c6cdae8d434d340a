"""Tests for L{okws_twisted.tlsfront.front}'s TLS settings and the TLS facts on the handoff channel."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from okws_twisted.config import Listener
from okws_twisted.tlsfront.front import CertificateError, SNIDirectory, server_context
from okws_twisted.wire import handoff
from okws_twisted.wire.channel import ChannelError, Message


def handshake(
    server_ctx: SSL.Context, client_ctx: SSL.Context, name: bytes | None = b"example.test"
) -> tuple[SSL.Connection, SSL.Connection]:
    """Run a handshake in memory (asking for server C{name}); raise C{SSL.Error} if it fails."""
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    if name is not None:
        client.set_tlsext_host_name(name)
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
        try:
            server.do_handshake()
            client.do_handshake()
            return server, client
        except SSL.WantReadError:
            continue
    raise AssertionError("the handshake did not finish")


class ContextTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.key, self.cert = os.path.join(self.dir, "key.pem"), os.path.join(self.dir, "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
             "-days", "2", "-subj", "/CN=example.test"],
            check=True, capture_output=True, timeout=60,
        )
        self.listener = Listener(kind="tcp", port=443, private_key=self.key, cert_key=self.cert)

    def client(self, alpn: list[bytes] | None = None, max_version: int | None = None) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if alpn:
            ctx.set_alpn_protos(alpn)
        if max_version is not None:
            ctx.set_min_proto_version(0)
            ctx.set_max_proto_version(max_version)
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return ctx

    def test_alpnPrefersHttp11(self) -> None:
        """curl offers h2 first: the front picks http/1.1."""
        server, client = handshake(server_context(self.listener), self.client([b"h2", b"http/1.1"]))
        self.assertEqual(server.get_alpn_proto_negotiated(), b"http/1.1")
        self.assertEqual(server.get_servername(), b"example.test")

    def test_noAlpn(self) -> None:
        server, client = handshake(server_context(self.listener), self.client())
        self.assertEqual(server.get_alpn_proto_negotiated(), b"")

    def test_tls11Refused(self) -> None:
        self.assertRaises(SSL.Error, handshake, server_context(self.listener), self.client(max_version=SSL.TLS1_1_VERSION))

    def test_tls12Accepted(self) -> None:
        server, client = handshake(server_context(self.listener), self.client(max_version=SSL.TLS1_2_VERSION))
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.2")

    def test_missingKey(self) -> None:
        os.unlink(self.key)
        e = self.assertRaises(CertificateError, server_context, self.listener)
        self.assertIn(self.listener.description, str(e))

    def test_keyDoesNotMatch(self) -> None:
        other = os.path.join(self.dir, "other.pem")
        subprocess.run(["openssl", "genrsa", "-out", other, "2048"], check=True, capture_output=True, timeout=60)
        listener = Listener(kind="tcp", port=443, private_key=other, cert_key=self.cert)
        self.assertRaises(CertificateError, server_context, listener)


FACTS = {"sni": "example.test", "cipher": "TLS_AES_256_GCM_SHA384", "version": "TLSv1.3", "alpn": "http/1.1"}


class FactsTests(SynchronousTestCase):
    def message(self, meta: dict) -> Message:
        return Message(meta["k"], meta, b"", [7])

    def test_roundTrip(self) -> None:
        peer, host = IPv4Address("TCP", "192.0.2.7", 4000), IPv4Address("TCP", "192.0.2.1", 443)
        meta = handoff.connection_meta(handoff.CONN, 1, peer, host, FACTS)
        conn = handoff.parse_connection(self.message(meta))
        self.assertEqual(conn.tls, FACTS)
        self.assertEqual(conn.peer, peer)
        plain = handoff.parse_connection(self.message(handoff.connection_meta(handoff.CONN, 2, peer, host)))
        self.assertIsNone(plain.tls)

    def test_bad(self) -> None:
        for tls in ({"sni": "x"}, {**FACTS, "cipher": 3}, {**FACTS, "extra": ""}, ["x"], {**FACTS, "sni": "x" * 300}):
            meta = {**handoff.connection_meta(handoff.CONN, 1, IPv4Address("TCP", "1.2.3.4", 1), IPv4Address("TCP", "1.2.3.4", 2)), "tls": tls}
            self.assertRaises(ChannelError, handoff.parse_connection, self.message(meta))

    def test_summary(self) -> None:
        self.assertEqual(handoff.tls_summary(FACTS), "TLSv1.3/TLS_AES_256_GCM_SHA384")


class StartupCheckTests(SynchronousTestCase):
    """okws refuses to start with a missing key or certificate file, naming it."""

    def test_missing(self) -> None:
        from okws_twisted.config import parse
        from okws_twisted.launcher.listeners import check_tls_files

        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        open(os.path.join(d, "key.pem"), "w").close()
        os.mkdir(os.path.join(d, "cert.pem"))
        site = parse(
            "[okws]\nlisten = ssl:443:privateKey=key.pem:certKey=cert.pem\n  ssl:444:privateKey=gone.pem\n"
            "[service:a]\nresource = a.b:C\npaths = /a\n",
            "site.ini", d,
        )
        self.assertEqual(check_tls_files(site), [
            f"site.ini: [okws] listen: 'ssl:443:privateKey=key.pem:certKey=cert.pem': certKey {d}/cert.pem is not a file",
            f"site.ini: [okws] listen: 'ssl:444:privateKey=gone.pem': privateKey {d}/gone.pem does not exist",
            f"site.ini: [okws] listen: 'ssl:444:privateKey=gone.pem': certKey {d}/gone.pem does not exist",
        ])


def make_pem(directory: str, filename: str, cn: str, sans: list[str]) -> str:
    """One PEM file holding a fresh key and its self-signed certificate (as a C{tls:} directory holds them)."""
    if shutil.which("openssl") is None:
        raise SkipTest("openssl is not installed")
    path = os.path.join(directory, filename)
    key, cert = path + ".key", path + ".crt"
    args = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
            "-days", "2", "-subj", f"/CN={cn}"]
    if sans:
        args += ["-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in sans)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    with open(path, "wb") as out:
        for part in (key, cert):
            with open(part, "rb") as f:
                out.write(f.read())
            os.unlink(part)
    os.chmod(path, 0o600)
    return path


class _PemDirectory(SynchronousTestCase):
    """A directory of four PEM files, as a tls: listener's."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        make_pem(self.dir, "a.example.pem", "a.example", ["a.example"])
        make_pem(self.dir, "b.pem", "b.example", ["b.example", "www.b.example"])
        make_pem(self.dir, "*.w.example.pem", "wild", [])
        make_pem(self.dir, "default.pem", "fallback", [])
        self.now = 100.0
        self.listener = Listener(kind="tcp", port=443, sni_dir=self.dir)

    def served(self, store: SNIDirectory, name: bytes | None) -> str:
        _server, client = handshake(store.getContext(), SSL.Context(SSL.TLS_CLIENT_METHOD), name)
        return client.get_peer_certificate().get_subject().CN

    def store(self) -> SNIDirectory:
        return SNIDirectory(self.listener, lambda: self.now)


class SNIDirectoryTests(_PemDirectory):
    """A tls: listener's directory: the certificate by SNI name, wildcard, default, re-read."""

    def test_byName(self) -> None:
        store = self.store()
        self.assertEqual(self.served(store, b"a.example"), "a.example")
        self.assertEqual(self.served(store, b"www.b.example"), "b.example")
        self.assertEqual(self.served(store, b"B.Example"), "b.example")

    def test_wildcard(self) -> None:
        store = self.store()
        self.assertEqual(self.served(store, b"x.w.example"), "wild")
        self.assertEqual(self.served(store, b"w.example"), "fallback")

    def test_defaultForUnknownOrNoName(self) -> None:
        store = self.store()
        self.assertEqual(self.served(store, b"nobody.example"), "fallback")
        self.assertEqual(self.served(store, None), "fallback")

    def test_firstFileWithoutDefault(self) -> None:
        os.unlink(os.path.join(self.dir, "default.pem"))
        self.assertEqual(self.served(self.store(), b"nobody.example"), "wild")  # '*' sorts first

    def test_unknownNameReadsAgain(self) -> None:
        store = self.store()
        make_pem(self.dir, "new.example.pem", "new.example", [])
        self.assertEqual(self.served(store, b"new.example"), "fallback")  # read under a second ago
        self.now += 2
        self.assertEqual(self.served(store, b"new.example"), "new.example")

    def test_noUsableFile(self) -> None:
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        with open(os.path.join(self.dir, "junk.pem"), "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(CertificateError) as caught:
            self.store()
        self.assertIn(f"no usable .pem file (a key and its certificate chain) in {self.dir}", str(caught.exception))
        self.assertIn(f"{self.dir}/junk.pem", str(caught.exception))

    def test_startupCheck(self) -> None:
        from okws_twisted.config import parse
        from okws_twisted.launcher.listeners import check_tls_files

        empty = os.path.join(self.dir, "empty")
        os.mkdir(empty)
        site = parse(
            "[okws]\nlisten = tls:443:path=.\n  tls:444:path=gone\n  tls:445:path=empty\n  tls:446:path=b.pem\n"
            "[service:a]\nresource = a.b:C\npaths = /a\n",
            "site.ini", self.dir,
        )
        d = self.dir
        self.assertEqual(check_tls_files(site), [
            f"site.ini: [okws] listen: 'tls:444:path=gone': path {d}/gone does not exist",
            f"site.ini: [okws] listen: 'tls:445:path=empty': path {d}/empty holds no .pem file "
            "(each NAME.pem holds a key and its certificate chain)",
            f"site.ini: [okws] listen: 'tls:446:path=b.pem': path {d}/b.pem is not a directory",
        ])


class CertificateTableTests(_PemDirectory):
    """What the front tells the dispatcher for 421: each name's certificate, and each connection's."""

    def test_table(self) -> None:
        store = self.store()
        names, default = store.table()
        self.assertEqual(sorted(names), ["*.w.example", "a.example", "b", "b.example", "default", "www.b.example"])
        self.assertEqual(names["b.example"], names["www.b.example"])
        self.assertEqual(names["default"], default)
        self.assertEqual(len({names["a.example"], names["b.example"], names["*.w.example"], default}), 4)

    def test_chosenContextHasItsId(self) -> None:
        """The id of the context the handshake used is the one the table gives that name."""
        from okws_twisted.wire.certs import CertificateTable

        store = self.store()
        table = CertificateTable(*store.table())
        for name in (b"a.example", b"x.w.example", b"nobody.example", b"WWW.b.example"):
            server, _client = handshake(store.getContext(), SSL.Context(SSL.TLS_CLIENT_METHOD), name)
            self.assertEqual(store.ids[server.get_context()], table.cert_for(name.lower()), name)

    def test_changedAfterReading(self) -> None:
        """A directory read again (an unknown name) announces new ids; the first reading does not."""
        told = []
        store = SNIDirectory(self.listener, lambda: self.now, lambda: told.append(store.table()))
        self.assertEqual(told, [])
        before = store.table()
        make_pem(self.dir, "new.example.pem", "new.example", [])
        self.now += 2
        self.served(store, b"new.example")
        self.assertEqual(len(told), 1)
        names, default = told[0]
        self.assertIn("new.example", names)
        self.assertNotEqual(names["a.example"], before[0]["a.example"])  # new contexts, new ids

    def test_frontSendsTablesAndChoice(self) -> None:
        """On a new dispatcher channel the front sends each tls: listener's table; a conn names its choice."""
        from twisted.internet.testing import MemoryReactorClock

        from okws_twisted.config import parse
        from okws_twisted.tlsfront.front import TLSFront
        from okws_twisted.wire import certs, limits
        from okws_twisted.wire.channel import read_one_blocking, socketpair

        site = parse(f"[okws]\nlisten = tls:443:path={self.dir}\n[service:a]\nresource = a.b:C\npaths = /a\n", "site.ini", "/")
        front = TLSFront(MemoryReactorClock(), site)
        store = front.context_factory(site.listen[0], 0)
        mine, theirs = socketpair()
        self.addCleanup(theirs.close)
        front.peer("tls", {}, mine)
        self.addCleanup(front.dispatcher.close)
        msg = read_one_blocking(theirs, 2, limits.TLS_DISPATCHER)
        listener, table = certs.parse_certs(msg)
        self.assertEqual((listener, table.names, table.default), (0, *store.table()))
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        front.pass_on(r, IPv4Address("TCP", "1.2.3.4", 1), IPv4Address("TCP", "1.2.3.4", 2), FACTS, 0, table.names["a.example"])
        conn = read_one_blocking(theirs, 2, limits.TLS_DISPATCHER)
        conn.close_fds()
        self.assertEqual((conn.meta["listener"], conn.meta["cert"]), (0, table.names["a.example"]))


class SessionTests(SynchronousTestCase):
    """The front in process, on its own epoll reactor driven by hand: a real TLS client on loopback,
    the dispatcher's side played by the ``tls`` channel's other end."""

    def setUp(self) -> None:
        import socket

        from twisted.internet.epollreactor import EPollReactor

        from okws_twisted.config import parse
        from okws_twisted.tlsfront.front import TLSFront
        from okws_twisted.wire import channel

        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        pem = make_pem(self.dir, "site.pem", "example.test", ["example.test"])
        self.reactor = EPollReactor()
        site = parse("[okws]\n[service:a]\nresource = a:B\npaths = /a\n", "site.ini", self.dir)
        self.front = TLSFront(self.reactor, site)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        self.addr = lsock.getsockname()
        self.front.listen([(Listener(kind="tcp", port=self.addr[1], private_key=pem, cert_key=pem), lsock)])
        self.ours, theirs = channel.socketpair()
        self.addCleanup(self.ours.close)
        self.front.peer("tls", {}, theirs)
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        self.front.stop()
        if self.front.dispatcher is not None:
            self.front.dispatcher.close()
        for _ in range(20):
            self.reactor.iterate(0)

    def until(self, done, what: str):  # type: ignore[no-untyped-def]
        """Turn the front's reactor until C{done()} is true (bounded)."""
        for _ in range(5000):
            self.reactor.iterate(0)
            result = done()
            if result:
                return result
        self.fail(f"no {what}")

    def tls_client(self):  # type: ignore[no-untyped-def]
        import socket
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(self.addr, timeout=10)
        raw.setblocking(False)
        client = ctx.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="example.test")
        self.addCleanup(client.close)

        def handshake() -> bool:
            try:
                client.do_handshake()
                return True
            except ssl.SSLWantReadError:
                return False

        self.until(handshake, "handshake")
        return client

    def read(self, client) -> bytes:  # type: ignore[no-untyped-def]
        import ssl

        out = b""
        while True:
            try:
                data = client.recv(65536)
            except ssl.SSLWantReadError:
                return out
            except ssl.SSLEOFError:
                return out + b"<EOF>"
            if not data:
                return out + b"<EOF>"
            out += data

    def session(self):  # type: ignore[no-untyped-def]
        """A TLS client whose handshake completed, and the dispatcher's end of its socket pair."""
        import socket

        from okws_twisted.wire import channel, handoff, limits

        client = self.tls_client()
        assembler = channel._Assembler(limits.handoff(16384))
        self.ours.setblocking(False)

        def conn():  # type: ignore[no-untyped-def]
            try:
                data, anc, _flags, _ = self.ours.recvmsg(channel._RECV_SIZE, channel._ANC_SIZE)
            except BlockingIOError:
                return None
            return assembler.add(data, channel._fds_from(anc))

        msg = self.until(conn, "conn message")
        self.assertEqual(msg.kind, handoff.CONN)
        self.assertEqual(handoff.parse_connection(msg).tls["sni"], "example.test")
        end = socket.socket(fileno=msg.fds[0])
        self.addCleanup(end.close)
        end.setblocking(False)
        return client, end

    def test_relayBothWaysThenClose(self) -> None:
        """The plaintext reaches the dispatcher's end of the pair and back; the pair's close ends the session."""
        client, end = self.session()
        client.sendall(b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n")
        got = []

        def request() -> bool:
            try:
                got.append(end.recv(65536))
            except BlockingIOError:
                pass
            return b"".join(got).endswith(b"\r\n\r\n")

        self.until(request, "request on the pair")
        self.assertEqual(b"".join(got), b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n")
        end.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        end.close()
        received = []
        self.until(lambda: received.append(self.read(client)) or b"".join(received).endswith(b"<EOF>"), "end of the session")
        self.assertEqual(b"".join(received), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok<EOF>")
        client.close()  # (the front sent its close_notify: it waits for the client's close)
        self.until(lambda: not self.front.clients, "the session forgotten")

    def test_clientThatNeverClosesIsCut(self) -> None:
        """The pair's close sends the front's close_notify; a client that neither answers it nor closes
        is cut C{tls_handshake_timeout} later, and a session still relaying is not."""
        import time

        from okws_twisted.config import parse

        kept, _kept_end = self.session()
        rude, end = self.session()
        # (after the handshakes: the front reads the bound when it begins closing)
        self.front.update_config(
            parse("[okws]\ntls_handshake_timeout = 1\n[service:a]\nresource = a:B\npaths = /a\n", "site.ini", self.dir)
        )
        end.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        closing = time.monotonic()
        end.close()
        received = []
        self.until(lambda: received.append(self.read(rude)) or b"".join(received).endswith(b"<EOF>"), "close_notify")
        self.assertEqual(b"".join(received), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok<EOF>")
        self.assertEqual(len(self.front.clients), 2)
        deadline = closing + 10
        while len(self.front.clients) > 1:  # the reactor turned, bounded; the deadline is real time
            self.assertLess(time.monotonic(), deadline, "the client that never closed was not cut")
            self.reactor.iterate(0.05)
        self.assertGreater(time.monotonic() - closing, 0.9)
        self.assertEqual(self.front.close_timeouts, 1)
        self.assertEqual([c.transport.getPeer().port for c in self.front.clients], [kept.getsockname()[1]])

    def test_stopClosesTheListener(self) -> None:
        import socket

        self.front.stop()
        self.reactor.iterate(0)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(self.addr, timeout=5).close()
