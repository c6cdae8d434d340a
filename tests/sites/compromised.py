"""
A "compromised" service: on request it tries every act its jail must forbid
and reports, for each, the errno it got or "SUCCEEDED".

GET /evil?pid=OTHER_SERVICE_PID&pid=DISPATCHER_PID&path=/some/file&path=...
"""

import ctypes
import errno
import json
import os
import socket

from okws_twisted import ServiceResource

PTRACE_ATTACH = 16


def _attempt(fn):
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "SUCCEEDED"


def _ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Evil(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        pids = [int(p) for p in request.args.get(b"pid", [])]
        paths = [p.decode() for p in request.args.get(b"path", [])]
        wpaths = [p.decode() for p in request.args.get(b"wpath", [])]
        out = {}
        for path in paths:
            out[f"read {path}"] = _attempt(lambda p=path: open(p, "rb").read(1))
        for path in wpaths:
            out[f"write {path}"] = _attempt(lambda p=path: open(p, "ab").write(b"forged\n"))
        for pid in pids:
            out[f"kill {pid}"] = _attempt(lambda p=pid: os.kill(p, 0))
            out[f"ptrace {pid}"] = _attempt(lambda p=pid: _ptrace(p))
            out[f"environ {pid}"] = _attempt(lambda p=pid: open(f"/proc/{p}/environ", "rb").read())
        out["write own jail /"] = _attempt(lambda: open("/planted", "wb").write(b"x"))
        out["write own jail /tmp"] = _attempt(lambda: open("/tmp/planted", "wb").write(b"x"))
        out["mkdir own jail"] = _attempt(lambda: os.mkdir("/newdir"))
        port = int(request.args.get(b"port", [b"1"])[0])
        out["connect 127.0.0.1"] = _attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
        out["bind a port"] = _attempt(lambda: socket.socket().bind(("0.0.0.0", 0)))
        out["listen on a port"] = _attempt(lambda: _listen())
        out["become root"] = _attempt(lambda: os.setuid(0))
        out["chroot out"] = _attempt(lambda: os.chroot("/"))
        out["uid"] = os.getuid()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(out).encode()


def _listen():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(1)
