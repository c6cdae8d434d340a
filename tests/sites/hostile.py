"""
A hostile service: what an attacker who runs code in a service instance sends over its channels.

It reaches its own channels the way injected code would, through the objects of its own
process (the request's connection leads to the runtime, whose handoff and templates channels
hold the sockets), and writes to those sockets directly, past every check the runtime's own
sending would make.  Each endpoint reports what it did as JSON.  Used by
L{tests.test_e2e_walls}; never part of a real site.

GET /evil/whoami                      the dispatcher's id of this connection, the instance, the pid
GET /evil/forge-back?path=P&id=N      hand back its own socket pair as connection N (default: its
                                      own), with GET P in it, claiming 6.6.6.6:4444 over TLS;
                                      reports what came back on the other end within 3 s
GET /evil/repeat-back?path=P          hand its own connection back twice, GET P in it, claiming
                                      6.6.6.6:4444 over TLS; never answers itself
GET /evil/steal-back?id=N             hand back connection N (another instance's) with its own socket
GET /evil/fds?kind=ack&count=C&n=F    C messages of that kind, each carrying F descriptors
GET /evil/flood?channel=handoff|templates&mode=announce|endless|garbage&seconds=S
                                      announce 10^12 bytes and stream pieces; or send complete
                                      messages at the chunk size without end; or bytes that are
                                      no message at all; for S seconds or until the channel closes
POST /evil/...                        reads the body, answers its size (a target for slow bodies)
"""

import array
import json
import os
import select
import socket
import time

from twisted.internet.threads import deferToThread

from okws_twisted import ServiceResource
from okws_twisted.wire.channel import _CONT, _HEADER, CHUNK, VERSION, encode

CLAIMED_TLS = {"sni": "bank.example", "cipher": "TLS_AES_256_GCM_SHA384", "version": "TLSv1.3", "alpn": "http/1.1"}
CLAIMED_PEER = ["tcp", "6.6.6.6", 4444]

#: Sockets kept open on purpose (a hostile process need not tidy up).
_kept = []


def _send_raw(sock, datagram, fds=(), deadline=None):
    """One datagram on a channel socket, waiting while it is full; past every check of our own."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while True:
        try:
            return sock.sendmsg([datagram], anc)
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the channel stayed full") from None
            select.select([], [sock], [], 0.5)


def _runtime(request):
    return request.channel.okws_connection.runtime


def _channel_socket(request, which):
    runtime = _runtime(request)
    if which == "control":
        # The launcher's end of it: fd 3, as every child gets it.
        return socket.socket(fileno=os.dup(3))
    ch = runtime.link if which == "handoff" else runtime.templates._channel
    return ch._sock


def _request_bytes(path):
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()


def _back(sock, conn_id, fd, path):
    meta = {"k": "back", "id": conn_id, "peer": CLAIMED_PEER, "host": CLAIMED_PEER, "tls": CLAIMED_TLS}
    [datagram] = encode(meta, _request_bytes(path))
    _send_raw(sock, datagram, (fd,))


class Hostile(ServiceResource):
    isLeaf = True
    # A target for slow bodies, not a form: no CSRF token.
    csrf_methods = frozenset()

    def render_POST(self, request):
        return json.dumps({"read": len(request.content.read())}).encode()

    def render_GET(self, request):
        action = request.postpath[0].decode() if request.postpath else ""
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        request.setHeader(b"content-type", b"application/json")
        conn = request.channel.okws_connection
        if action == "whoami":
            runtime = _runtime(request)
            return json.dumps({"id": conn.conn_id, "index": runtime.index, "pid": int(os.environ.get("OKWS_PID", os.getpid()))}).encode()
        if action == "forge-back":
            return self.forge_back(request, args)
        if action == "repeat-back":
            return self.repeat_back(request, args)
        if action == "steal-back":
            sock = _channel_socket(request, "handoff")
            _back(sock, int(args["id"]), conn.transport.fileno(), args.get("path", "/b/stolen"))
            return json.dumps({"sent": True}).encode()
        if action == "fds":
            return self.fds(request, args)
        if action == "flood":
            which = args.get("channel", "handoff")
            sock = _channel_socket(request, which)
            # Our own runtime must not send on that channel meanwhile (its
            # messages would break the flood's sequence): silence it.
            runtime = _runtime(request)
            if which != "control":
                channel = runtime.link if which == "handoff" else runtime.templates._channel
                channel.send = lambda *a, **kw: None
            d = deferToThread(_flood, sock, which, args.get("mode", "announce"), float(args.get("seconds", "5")))
            return d.addCallback(lambda report: json.dumps(report).encode())
        request.setResponseCode(404)
        return b"{}"

    def forge_back(self, request, args):
        conn = request.channel.okws_connection
        conn_id = int(args["id"]) if "id" in args else conn.conn_id
        mine, sent = socket.socketpair()
        _back(_channel_socket(request, "handoff"), conn_id, sent.fileno(), args.get("path", "/b/forged"))
        sent.close()

        def wait():
            mine.settimeout(3)
            got = b""
            try:
                while True:
                    chunk = mine.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            mine.close()
            return json.dumps({"answer": got.decode("latin-1")}).encode()

        return deferToThread(wait)

    def repeat_back(self, request, args):
        conn = request.channel.okws_connection
        handoff = _channel_socket(request, "handoff")
        path = args.get("path", "/b/repeated")
        fd = conn.transport.fileno()
        _back(handoff, conn.conn_id, fd, path)
        _back(handoff, conn.conn_id, fd, path + "-again")
        # Never answer: the connection is the dispatcher's now (or so we claim, twice).
        _kept.append(conn.transport.detach())
        from twisted.web.server import NOT_DONE_YET

        return NOT_DONE_YET

    def fds(self, request, args):
        sock = _channel_socket(request, "handoff")
        kind, count, n = args.get("kind", "ack"), int(args.get("count", "1")), int(args.get("n", "16"))
        r, w = os.pipe()
        fds = [w] * n
        for _ in range(count):
            [datagram] = encode({"k": kind, "ids": []})
            try:
                _send_raw(sock, datagram, fds, deadline=time.monotonic() + 5)
            except OSError:
                break
        os.close(r)
        os.close(w)
        return json.dumps({"sent": count}).encode()


def _flood(sock, channel, mode, seconds):
    """Send until C{seconds} pass or the channel is closed under us; report how far it got."""
    deadline = time.monotonic() + seconds
    kind = "stats" if channel == "handoff" else "get"
    sent = 0
    error = None
    try:
        if mode == "announce":
            head = json.dumps({"k": kind, "id": 1, "name": "x", "more": 10**12}).encode()
            _send_raw(sock, _HEADER.pack(VERSION, len(head)) + head + b"y" * CHUNK, deadline=deadline)
            sent += CHUNK
            piece = _HEADER.pack(VERSION, len(_CONT)) + _CONT + b"y" * CHUNK
            while time.monotonic() < deadline:
                _send_raw(sock, piece, deadline=deadline)
                sent += CHUNK
        elif mode == "endless":
            [datagram] = encode({"k": kind, "id": 1, "name": "x"}, b"z" * CHUNK)
            while time.monotonic() < deadline:
                _send_raw(sock, datagram, deadline=deadline)
                sent += CHUNK
        else:
            while time.monotonic() < deadline:
                _send_raw(sock, b"\xff" * 1000, deadline=deadline)
                sent += 1000
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    return {"sent": sent, "error": error}

