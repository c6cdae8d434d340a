"""
A service that tries to get out from under its supervision (issue 12): it forks, leaves
orphans, floods its output, eats memory and sends the launcher control messages only the
dispatcher may send.  Each act is one path; the answer is JSON saying what happened.

GET .../fork       os.fork, subprocess, posix_spawn, raw clone3, a thread, deferToThread
GET .../orphan     double-fork a process that sleeps for ever, holding every inherited fd
GET .../hang?term=ignore  block the whole process (it never drains); ignore SIGTERM if asked
                   (else ignore SIGUSR2, which a test sees in /proc/PID/status: it hangs now)
GET .../alloc?mb=N allocate and touch N MiB
GET .../memfd?mb=N write N MiB into a memfd
GET .../flood?mb=N&lines=0|1  write N MiB to stdout (lines=1: 100-byte lines; else none)
GET .../control?kind=K&service=S  send the launcher a control message of kind K
GET .../anything else: who answered (C{pid}: OKWS_PID, C{getpid}: 1 in a PID namespace)
"""

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from twisted.internet import threads

from okws_twisted import ServiceResource

_NR_CLONE3 = 435  # the same on x86_64 and aarch64


def _errno_of(fn):
    """"ok", or the errno name of the OSError C{fn} raised."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"


def _fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _clone3():
    libc = ctypes.CDLL(None, use_errno=True)
    # struct clone_args with only exit_signal = SIGCHLD (offset 32): a plain fork.
    args = ctypes.create_string_buffer(88)
    ctypes.c_uint64.from_buffer(args, 32).value = signal.SIGCHLD
    pid = libc.syscall(_NR_CLONE3, args, ctypes.c_size_t(88))
    if pid == 0:
        os._exit(0)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.waitpid(pid, 0)


def _thread():
    box = []
    t = threading.Thread(target=lambda: box.append(threading.get_ident()))
    t.start()
    t.join(10)
    if not box:
        raise OSError(errno.ETIMEDOUT, "the thread did not run")


def _orphan():
    """A grandchild in its own session that sleeps for ever, with every fd we hold."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os.setsid()
            os.write(w, str(os.getpid()).encode())
            while True:
                time.sleep(1000)
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    inner = int(os.read(r, 32))
    os.close(r)
    return inner


def _send_control(meta):
    from okws_twisted.wire import control
    from okws_twisted.wire.channel import encode

    sock = socket.socket(fileno=os.dup(control.CONTROL_FD))
    try:
        for datagram in encode(meta):
            sock.send(datagram)
    finally:
        sock.close()


class Runaway(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        act = request.postpath[-1].decode() if request.postpath else ""
        arg = {k.decode(): v[0].decode() for k, v in request.args.items()}
        request.setHeader(b"content-type", b"application/json")
        out = {"pid": os.environ.get("OKWS_PID"), "getpid": os.getpid()}
        if act == "fork":
            out["os.fork"] = _errno_of(_fork)
            out["subprocess"] = _errno_of(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
            out["posix_spawn"] = _errno_of(lambda: os.waitpid(os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {}), 0))
            out["clone3"] = _errno_of(_clone3)
            out["thread"] = _errno_of(_thread)
            d = threads.deferToThread(threading.get_ident)
            d.addCallback(lambda _: out.update(deferToThread="ok"))
            d.addErrback(lambda f: out.update(deferToThread=repr(f.value)))
            d.addCallback(lambda _: json.dumps(out).encode())
            return d
        if act == "orphan":
            out["orphan"] = _orphan()
        elif act == "hang":
            if arg.get("term") == "ignore":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            else:
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # only to show that it hangs now
            time.sleep(3600)
        elif act == "alloc":
            block = bytearray(int(arg["mb"]) << 20)  # zero-filled: every page touched
            out["allocated"] = len(block) >> 20
        elif act == "memfd":
            fd = os.memfd_create("runaway")
            chunk = b"m" * (1 << 20)
            written = 0
            try:
                for _ in range(int(arg["mb"])):
                    written += os.write(fd, chunk)
                out["memfd"] = "ok"
            except OSError as e:
                out["memfd"] = errno.errorcode.get(e.errno, str(e.errno))
            finally:
                os.close(fd)
            out["written_mb"] = written >> 20
        elif act == "flood":
            line = b"f" * 99 + b"\n" if arg.get("lines") == "1" else b"f" * 100
            chunk = line * ((1 << 20) // len(line))
            for _ in range(int(arg["mb"])):
                os.write(1, chunk)
            out["flooded_mb"] = int(arg["mb"])
        elif act == "control":
            meta = {"k": arg["kind"], **{k: v for k, v in arg.items() if k != "kind"}}
            if "pid" in meta:
                meta["pid"] = int(meta["pid"])
            _send_control(meta)
            out["sent"] = meta
        return json.dumps(out).encode()
