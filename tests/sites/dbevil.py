"""
A "compromised" service with a database: on request it attacks its database
proxy and its data, and reports what happened.

POST a JSON command:

    {"op": "files", "paths": [...]}                 open each: the errno, or "SUCCEEDED"
    {"op": "connect", "tcp": [host, port], "unix": path}
    {"op": "call", "query": name, "params": {...}}  through self.db, as an author would
    {"op": "raw", "attack": ..., ...}               straight onto the db channel's socket,
                                                    bypassing every check of the client
    {"op": "die"}                                   exit (the launcher relaunches it)

Raw attacks: C{garbage} (not a message at all), C{huge} (a message declaring
100 MiB), C{replies} (a kind only the proxy may send), C{calls} (the given
C{calls}, each C{[name, params]}, answered one by one), C{flood} (C{n} calls of
C{query}).  For C{calls} and C{flood} the service takes its channel off the
reactor and reads the proxy's replies itself, so it reports what the proxy
answered, by status.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import struct
import time

from twisted.internet import reactor

from okws_twisted import DatabaseError, ServiceResource
from okws_twisted.wire import channel as wirechannel
from okws_twisted.wire import dbchannel


#: Call ids of raw calls: above any the client used, and increasing (the proxy refuses a repeated one).
_IDS = itertools.count(10**9)


def _attempt(fn):
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "SUCCEEDED"


def _connect_tcp(host, port):
    s = socket.socket()
    try:
        s.settimeout(2)
        s.connect((host, port))
    finally:
        s.close()


def _connect_unix(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(2)
        s.connect(path)
    finally:
        s.close()


class Evil(ServiceResource):

    # A JSON test API driven by the tests, not a browser form: no CSRF token.
    csrf_methods = frozenset()
    isLeaf = True

    async def render_POST(self, request):
        command = json.loads(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        op = command["op"]
        if op == "files":
            answer = {path: _attempt(lambda p=path: open(p, "rb").read(1)) for path in command["paths"]}
        elif op == "connect":
            answer = {}
            if command.get("tcp"):
                answer["tcp"] = _attempt(lambda: _connect_tcp(*command["tcp"]))
            if command.get("unix"):
                answer["unix"] = _attempt(lambda: _connect_unix(command["unix"]))
        elif op == "call":
            try:
                result = await getattr(self.db, command["query"])(**command.get("params", {}))
            except DatabaseError as e:
                answer = {"error": type(e).__name__, "message": e.message}
            else:
                answer = {"result": repr(result)}
        elif op == "raw":
            answer = self.raw(request.site.db, command)
        elif op == "die":
            reactor.callLater(0.1, os._exit, 1)
            answer = {"dying": os.getpid()}
        else:
            answer = {"error": "unknown op"}
        return json.dumps(answer).encode()

    def raw(self, client, command):
        link = client._channel
        if link is None or not link.connected:
            return {"error": "no db channel"}
        sock = link._sock
        attack = command["attack"]
        if attack == "garbage":
            sock.send(b"\x07this is not a message")
            return {"sent": "garbage"}
        if attack == "huge":
            return self.huge(sock)
        if attack == "replies":
            for datagram in wirechannel.encode({"k": dbchannel.REPLIES}, b'[[1,"ok",1]]'):
                sock.send(datagram)
            return {"sent": "replies"}
        if attack == "calls":
            calls = [(next(_IDS), name, params) for name, params in command["calls"]]
            return self.exchange(link, sock, [calls], len(calls))
        if attack == "flood":
            n, query = command["n"], command["query"]
            batches = []
            for start in range(0, n, dbchannel.MAX_BATCH):
                batches.append([(next(_IDS), query, {}) for _ in range(start, min(n, start + dbchannel.MAX_BATCH))])
            return self.exchange(link, sock, batches, n)
        return {"error": "unknown attack"}

    def huge(self, sock):
        """A message that declares 100 MiB, then as much of it as the proxy will take."""
        size = 100 * 1024 * 1024
        head = json.dumps({"k": "calls", "more": size}, separators=(",", ":")).encode()
        chunk = b"x" * wirechannel.CHUNK
        cont = struct.pack("!BH", 1, len(b'{"k":"+"}')) + b'{"k":"+"}'
        sent = 0
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            sock.send(struct.pack("!BH", 1, len(head)) + head + chunk)
            sent += len(chunk)
            while sent < size:
                sock.send(cont + chunk)
                sent += len(chunk)
        except OSError as e:
            return {"sent": sent, "stopped": errno.errorcode.get(e.errno, str(e))}
        finally:
            sock.setblocking(False)
        return {"sent": sent, "stopped": None}

    def exchange(self, link, sock, batches, expected):
        """Send raw C{calls} messages, read the replies off the socket ourselves; count them by status."""
        reactor.removeReader(link)
        statuses, messages = {}, {}
        answered = 0
        started = time.monotonic()
        try:
            for batch in batches:
                entries = [dbchannel.call_entry(i, name, params) for i, name, params in batch]
                for datagram in wirechannel.encode(*dbchannel.calls(entries)):
                    sock.setblocking(True)
                    sock.settimeout(30)
                    sock.send(datagram)
            deadline = started + 60
            while answered < expected and time.monotonic() < deadline:
                msg = wirechannel.read_one_blocking(sock, max(0.1, deadline - time.monotonic()), wirechannel.ChannelLimits(max_payload=1 << 30))
                if msg.kind != dbchannel.REPLIES:
                    continue
                for reply in dbchannel.parse_replies(msg):
                    answered += 1
                    statuses[reply.status] = statuses.get(reply.status, 0) + 1
                    if reply.status != dbchannel.OK and len(messages) < 10:
                        messages[reply.value] = messages.get(reply.value, 0) + 1
        except (OSError, wirechannel.ChannelError) as e:
            statuses["error"] = str(e)
        finally:
            sock.setblocking(False)
            if link.connected:
                reactor.addReader(link)
        return {"answered": answered, "statuses": statuses, "messages": messages,
                "seconds": time.monotonic() - started}
