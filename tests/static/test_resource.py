"""
Tests for L{okws_twisted.static.resource.StaticFiles}: what a client gets.

In memory through L{okws_twisted.testing.render} (the production site and request classes,
the read fallback of L{okws_twisted.static.body}), and over real sockets through okws's own
transport, where larger files go by C{sendfile}.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from okws_twisted.service.web import MountRoot, ServiceSite
from okws_twisted.static.files import http_date
from okws_twisted.static.resource import StaticFiles
from okws_twisted.testing import RenderedResponse, render
from okws_twisted.wire.transport import SocketTransport
from tests.wire.test_transport import Peer

CSS = b"body { color: #123; }\n" * 200


def make_root(test: SynchronousTestCase) -> str:
    root = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, root)
    os.makedirs(os.path.join(root, "css"))
    os.makedirs(os.path.join(root, "dir"))
    files = {
        "css/app.css": CSS,
        "css/app.css.br": b"BROTLI",
        "css/app.css.gz": b"GZIP",
        "logo.png": b"\x89PNG" + b"\0" * 100,
        "logo.png.gz": b"never chosen",
        "favicon.ico": b"\0\0\1\0icon",
        ".env": b"SECRET=1",
        "big.bin": os.urandom(300_000),
        "empty.txt": b"",
    }
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.symlink("/etc/hostname", os.path.join(root, "out"))
    return root


def header(response: RenderedResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class StaticTests(SynchronousTestCase):
    """One request at a time, in memory."""

    def setUp(self) -> None:
        self.root = make_root(self)
        self.resource = MountRoot(StaticFiles(self.root, 3600), ("/static", "/favicon.ico"))

    def get(self, path: str, method: str = "GET", **headers: str) -> RenderedResponse:
        return self.successResultOf(render(self.resource, method, path, headers={k.replace("_", "-"): v for k, v in headers.items()}))

    def test_file(self) -> None:
        response = self.get("/static/css/app.css")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, CSS)
        st = os.stat(os.path.join(self.root, "css/app.css"))
        self.assertEqual(header(response, "content-type"), "text/css; charset=utf-8")
        self.assertEqual(header(response, "content-length"), str(len(CSS)))
        self.assertEqual(header(response, "etag"), '"%x-%x"' % (st.st_mtime_ns, st.st_size))
        self.assertEqual(header(response, "last-modified"), http_date(st.st_mtime).decode())
        self.assertEqual(header(response, "cache-control"), "public, max-age=3600")
        self.assertEqual(header(response, "vary"), "Accept-Encoding")
        self.assertEqual(header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(header(response, "accept-ranges"), "bytes")
        self.assertIsNone(header(response, "content-encoding"))

    def test_mounted_exactly(self) -> None:
        """/favicon.ico names ROOT/favicon.ico; /static itself names ROOT/static (none here)."""
        response = self.get("/favicon.ico")
        self.assertEqual((response.code, response.body), (200, b"\0\0\1\0icon"))
        self.assertEqual(header(response, "content-type"), "image/x-icon")
        self.assertEqual(self.get("/static").code, 404)

    def test_no_cache(self) -> None:
        resource = MountRoot(StaticFiles(self.root, 0), ("/static",))
        response = self.successResultOf(render(resource, path="/static/logo.png"))
        self.assertEqual(header(response, "cache-control"), "no-cache")
        self.assertIsNone(header(response, "vary"))

    def test_head(self) -> None:
        response = self.get("/static/big.bin", "HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"")
        self.assertEqual(header(response, "content-length"), "300000")

    def test_empty_file(self) -> None:
        response = self.get("/static/empty.txt")
        self.assertEqual((response.code, response.body, header(response, "content-length")), (200, b"", "0"))

    def test_not_modified(self) -> None:
        tag = header(self.get("/static/css/app.css"), "etag")
        assert tag is not None
        for headers in ({"If-None-Match": tag}, {"If-None-Match": "W/" + tag}, {"If-None-Match": '"x", ' + tag},
                        {"If-Modified-Since": http_date(os.stat(os.path.join(self.root, "css/app.css")).st_mtime).decode()}):
            response = self.successResultOf(render(self.resource, path="/static/css/app.css", headers=headers))
            self.assertEqual(response.code, 304, headers)
            self.assertEqual(response.body, b"")
            self.assertEqual(header(response, "etag"), tag)
            self.assertEqual(header(response, "cache-control"), "public, max-age=3600")
            self.assertIsNone(header(response, "content-length"))
        self.assertEqual(self.get("/static/css/app.css", If_None_Match='"other"').code, 200)

    def test_precondition_failed(self) -> None:
        response = self.get("/static/css/app.css", If_Match='"other"')
        self.assertEqual(response.code, 412)
        self.assertIn(b"412", response.body)

    def test_range(self) -> None:
        response = self.get("/static/css/app.css", Range="bytes=0-3")
        self.assertEqual((response.code, response.body), (206, CSS[:4]))
        self.assertEqual(header(response, "content-range"), f"bytes 0-3/{len(CSS)}")
        self.assertEqual(header(response, "content-length"), "4")
        response = self.get("/static/big.bin", Range="bytes=-10")
        self.assertEqual(response.code, 206)
        with open(os.path.join(self.root, "big.bin"), "rb") as f:
            self.assertEqual(response.body, f.read()[-10:])

    def test_range_unsatisfiable(self) -> None:
        response = self.get("/static/css/app.css", Range=f"bytes={len(CSS)}-")
        self.assertEqual(response.code, 416)
        self.assertEqual(header(response, "content-range"), f"bytes */{len(CSS)}")
        self.assertIsNone(header(response, "etag"))

    def test_several_ranges_get_the_whole_file(self) -> None:
        """The documented refusal of multipart/byteranges: 200 with everything (no amplification)."""
        response = self.get("/static/css/app.css", Range="bytes=0-1,5-6,10-11")
        self.assertEqual((response.code, response.body), (200, CSS))

    def test_if_range(self) -> None:
        tag = header(self.get("/static/css/app.css"), "etag")
        assert tag is not None
        self.assertEqual(self.get("/static/css/app.css", Range="bytes=0-1", If_Range=tag).code, 206)
        self.assertEqual(self.get("/static/css/app.css", Range="bytes=0-1", If_Range='"stale"').code, 200)

    def test_precompressed(self) -> None:
        br = self.get("/static/css/app.css", Accept_Encoding="gzip, deflate, br")
        self.assertEqual((br.body, header(br, "content-encoding")), (b"BROTLI", "br"))
        self.assertEqual(header(br, "content-type"), "text/css; charset=utf-8")
        self.assertEqual(header(br, "vary"), "Accept-Encoding")
        gz = self.get("/static/css/app.css", Accept_Encoding="gzip")
        self.assertEqual((gz.body, header(gz, "content-encoding")), (b"GZIP", "gzip"))
        plain = self.get("/static/css/app.css", Accept_Encoding="identity")
        self.assertEqual(plain.body, CSS)
        tags = {header(r, "etag") for r in (br, gz, plain)}
        self.assertEqual(len(tags), 3)  # each representation its own tag
        # A range of a coded representation is a range of its coded bytes (as nginx does).
        part = self.get("/static/css/app.css", Accept_Encoding="gzip", Range="bytes=1-2")
        self.assertEqual((part.code, part.body), (206, b"ZI"))

    def test_not_compressible(self) -> None:
        response = self.get("/static/logo.png", Accept_Encoding="gzip")
        self.assertTrue(response.body.startswith(b"\x89PNG"))
        self.assertIsNone(header(response, "vary"))
        self.assertIsNone(header(response, "content-encoding"))

    def test_refused(self) -> None:
        """No listings, no dotfiles, no way out: each a 404 (the site's page), none a 500."""
        for path in ("/static/.env", "/static/..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd",
                     "/static/css/", "/static/dir", "/static/", "/static/nope", "/static/out", "/static/css%2fapp.css",
                     "/static/app.css%00.png", "/static/css//app.css", "/static/.env%00"):
            response = self.successResultOf(render(self.resource, path=path.encode()))
            self.assertEqual(response.code, 404, path)
            self.assertIn(b"404 Not Found", response.body)
            self.assertNotIn(b"SECRET", response.body)

    def test_site_error_page(self) -> None:
        response = self.successResultOf(render(self.resource, path="/static/nope", templates={
            "errors/404.html": "<p class=site>{{ status }} {{ message }}</p>",
        }))
        self.assertEqual(response.code, 404)
        self.assertEqual(response.body, b"<p class=site>404 Nothing is served at this address.</p>")

    def test_methods(self) -> None:
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            response = self.get("/static/css/app.css", method)
            self.assertEqual(response.code, 405, method)
            self.assertEqual(header(response, "allow"), "GET, HEAD")

    def test_fresh(self) -> None:
        """A file replaced on disk (by rename, as deploys should) is served at once, with a new tag."""
        before = self.get("/static/css/app.css")
        new = os.path.join(self.root, "css", ".app.css.new")
        with open(new, "wb") as f:
            f.write(b"p { margin: 0 }\n")
        os.utime(new, ns=(0, os.stat(os.path.join(self.root, "css/app.css")).st_mtime_ns + 10**9))
        os.replace(new, os.path.join(self.root, "css", "app.css"))
        after = self.get("/static/css/app.css")
        self.assertEqual(after.body, b"p { margin: 0 }\n")
        self.assertNotEqual(header(before, "etag"), header(after, "etag"))

    def test_large_file_without_sendfile(self) -> None:
        """Any transport without send_file gets the file in reads (here: testing's in-memory one)."""
        response = self.get("/static/big.bin")
        with open(os.path.join(self.root, "big.bin"), "rb") as f:
            self.assertEqual(response.body, f.read())


class SocketTests(TestCase):
    """Over a real socket and okws's transport: larger files by sendfile, keep-alive, slow readers."""

    timeout = 30

    def setUp(self) -> None:
        self.root = make_root(self)
        self.site = ServiceSite(MountRoot(StaticFiles(self.root, 60, send_timeout=0.5), ("/static", "/favicon.ico")))
        self.site.doStart()
        self.addCleanup(self.site.doStop)

    def connect(self, timeout: float = 60) -> tuple[socket.socket, SocketTransport, Any]:
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        peer = IPv4Address("TCP", "127.0.0.1", 1)
        channel = self.site.buildProtocol(peer)
        channel.timeOut = timeout
        transport = SocketTransport(reactor, ours, channel, peer, peer)
        transport.start()
        self.addCleanup(lambda: transport.connected and transport.abortConnection())
        return theirs, transport, channel

    def sparse(self, name: str, size: int) -> str:
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    async def test_pipelined_keep_alive(self) -> None:
        """A sendfile response, a small one and a HEAD, pipelined on one connection: in order, whole."""
        sock, transport, _ = self.connect()
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"HEAD /static/css/app.css HTTP/1.1\r\nHost: x\r\n\r\n")
        peer = Peer(sock)
        self.addCleanup(peer.stop)
        with open(os.path.join(self.root, "big.bin"), "rb") as f:
            big = f.read()
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3 or not data.endswith(b"\r\n\r\n"):
            await peer.wait(len(peer.data) + 1)  # bounded: each wait times out
            data = bytes(peer.data)
        first, rest = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: 300000", first)
        self.assertTrue(rest.startswith(big))
        rest = rest[len(big):]
        self.assertRegex(rest, rb"^HTTP/1.1 200 OK\r\n(?:.*\r\n)*\r\n\x00\x00\x01\x00iconHTTP/1.1 200 OK\r\n")
        self.assertTrue(transport.connected)

    async def test_slow_reader_bounded(self) -> None:
        """A slow reader of a 256 MiB file: nothing of the file is ever buffered in the process,
        and the send timeout (here 0.5 s) does not cut a download that keeps moving."""
        self.sparse("huge.bin", 256 << 20)
        sock, transport, channel = self.connect(timeout=0.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /static/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        peer = Peer(sock, per_read=65536)
        self.addCleanup(peer.stop)
        seen = []
        # 1.5 s of slow reading: three idle timeouts' worth.
        for _ in range(15):
            await peer.wait(len(peer.data) + 1)
            peer.stop()
            seen.append(transport.write_buffer_size)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(transport.connected)
        self.assertEqual(set(seen), {0})
        self.assertLess(len(peer.data), 256 << 20)
        await peer.wait((256 << 20) + 150)
        self.assertTrue(transport.connected)

    async def test_stalled_reader_cut(self) -> None:
        """A client that stops reading a large file loses its connection after the send timeout
        (here 0.5 s): twisted.web's own idle timer is off while a request is answered."""
        self.sparse("huge.bin", 256 << 20)
        sock, transport, _ = self.connect(timeout=0.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /static/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        peer = Peer(sock)
        self.addCleanup(peer.stop)
        await peer.wait(65536)
        peer.stop()  # and read no more
        started = reactor.seconds()
        lost: Deferred[None] = Deferred()
        transport.protocol.connectionLost = lambda reason, lost=lost: lost.callback(None)  # type: ignore[method-assign]
        await lost.addTimeout(10, reactor)
        self.assertGreater(reactor.seconds() - started, 0.3)
        self.assertFalse(transport.connected)

    async def test_file_shrinks_while_sent(self) -> None:
        """A file truncated mid-send: the connection is cut, so the short body never looks complete."""
        path = self.sparse("shrinks.bin", 64 << 20)
        sock, transport, _ = self.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /static/shrinks.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        peer = Peer(sock)
        self.addCleanup(peer.stop)
        await peer.wait(1 << 20)
        os.truncate(path, 2 << 20)
        await peer.wait("eof")
        head, body = bytes(peer.data).split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: 67108864", head)
        self.assertLess(len(body), 64 << 20)
        self.flushLoggedErrors()
        self.assertFalse(transport.connected)
