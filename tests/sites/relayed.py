"""
A service for the per-request isolation tests (L{tests.test_e2e_isolation}); never part of a real site.

GET  .../pid                 its pid (also in X-Okws-Pid, as every answer)
GET  .../steal               answers at once, then, as a compromised service would, keeps reading its
                             own end of the connection (a dup of its socket) in a thread until EOF
                             (or 20 s), its runtime no longer reading it
GET  .../loot                what that thread read (waits, bounded, until it ended)
GET  .../slow?seconds=S      sends its head and a first chunk at once, the rest after S seconds
GET  .../stream?mib=N&ms=T   N MiB (Content-Length set), 64 KiB every T ms
GET  .../bytes?mib=N         N MiB at once (Content-Length set)
GET  .../peer                what the service sees of its connection: the socket's family and peer
POST .../                    the body's length and sha256
"""

import hashlib
import json
import os
import socket
import threading
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.server import NOT_DONE_YET

from okws_twisted import ServiceResource

_loot = {"data": b"", "done": threading.Event()}


def _pid() -> bytes:
    return os.environ.get("OKWS_PID", str(os.getpid())).encode()


def _steal(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.settimeout(1.0)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            _loot["data"] += chunk
    finally:
        sock.close()
        _loot["done"].set()


class Relayed(ServiceResource):
    isLeaf = True
    # Uploads posted by the tests, not a form: no CSRF token.
    csrf_methods = frozenset()

    def render_GET(self, request):
        action = request.postpath[-1].decode() if request.postpath else ""
        request.setHeader(b"x-okws-pid", _pid())
        if action == "steal":
            _loot["data"] = b""
            _loot["done"].clear()
            transport = request.channel.transport
            fd = os.dup(transport.socket.fileno())
            threading.Thread(target=_steal, args=(fd,), daemon=True).start()
            # Once answered, its own runtime reads the connection no more: every byte that
            # arrives is the thread's.
            request.notifyFinish().addBoth(lambda _: reactor.removeReader(transport))
            return b'{"stealing": true}'
        if action == "loot":
            def wait():
                ended = _loot["done"].wait(20)
                return json.dumps({"ended": ended, "read": _loot["data"].decode("latin-1")}).encode()

            return deferToThread(wait)
        if action == "slow":
            seconds = float(request.args.get(b"seconds", [b"5"])[0])
            request.setHeader(b"content-length", b"10")
            request.write(b"first")
            reactor.callLater(seconds, lambda: (request.write(b"-last"), request.finish()))
            return NOT_DONE_YET
        if action == "stream":
            return self.stream(request)
        if action == "bytes":
            mib = int(request.args.get(b"mib", [b"1"])[0])
            return b"x" * (mib << 20)
        if action == "peer":
            sock = request.channel.transport.socket
            return json.dumps({"family": sock.family.name, "client": request.getClientAddress().host}).encode()
        return json.dumps({"pid": int(_pid()), "path": request.path.decode("latin-1")}).encode()

    def stream(self, request):
        total = int(request.args.get(b"mib", [b"10"])[0]) << 20
        interval = int(request.args.get(b"ms", [b"20"])[0]) / 1000
        request.setHeader(b"content-length", str(total).encode())
        chunk = b"s" * 65536
        sent = [0]

        def more():
            if request.finished or request._disconnected:
                return
            if sent[0] >= total:
                request.finish()
                return
            request.write(chunk)
            sent[0] += len(chunk)
            reactor.callLater(interval, more)

        more()
        return NOT_DONE_YET

    def render_POST(self, request):
        request.setHeader(b"x-okws-pid", _pid())
        body = request.content.read()
        return json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
