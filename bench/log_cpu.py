"""
The access log's CPU per request, on each side of the log channel, without the rest of the machine.

bench/run.py shows what the access log costs a service instance and the log daemon (OKWS's
oklogd) under load, mixed with the machine's noise; bench/access_record.py times only the
record's construction.  This runs, in one process, a real L{ServiceRuntime} serving keep-alive
requests over a socket pair (as bench/instance_cpu.py does, the reactor a clock) whose
L{RecordSender} is attached to a real L{LogDaemon} and L{LogWriter} (files in a temporary
directory) by a real seqpacket log channel, with the production batch size (256 records).
Each side's work is timed apart with C{time.process_time}:

 - the instance: each request (the record built and queued), sealing and sending each batch,
   and the wakeups that take the daemon's acknowledgements;
 - the daemon: the wakeups that take a batch (receive, decode, check, format, journal, write,
   acknowledge), per record.

Best of 7 rounds of 5,120 requests (20 batches).  C{--no-log}: the same instance without a
sender (the instance's cost of the log is the difference); C{--profile [SORT]}: a cProfile of
the daemon's timed part (C{--profile-instance}: of the instance's; C{--filter REGEX}: only
those functions); C{--no-daemon}: the sender has no channel and its
batches are taken as acknowledged when sealed (no daemon's work in this process's caches).

    .venv/bin/python bench/log_cpu.py [--no-log] [--no-daemon] [--profile [tottime]]
    PYTHONPATH=/tmp/snap .venv/bin/python bench/log_cpu.py   # another tree's code
"""

from __future__ import annotations

import cProfile
import os
import pstats
import select
import shutil
import socket
import sys
import tempfile
import time

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROUND = 5120
REQUEST = b"GET /hello?name=Ada HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk/4.2.0\r\nReferer: http://example.com/\r\n\r\n"
PEER = IPv4Address("TCP", "127.0.0.1", 40001)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)


def main() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from services.plain import Hello

    from okws_twisted.config import parse
    from okws_twisted.logd.daemon import LogDaemon, LogWriter
    from okws_twisted.logd.format import Sender
    from okws_twisted.service.runtime import ServiceRuntime
    from okws_twisted.wire import handoff
    from okws_twisted.wire.channel import socketpair
    from okws_twisted.wire.logsender import RecordSender

    log = "--no-log" not in sys.argv
    profile_logd = "--profile" in sys.argv
    profile_instance = "--profile-instance" in sys.argv
    sort = "cumtime"
    for flag in ("--profile", "--profile-instance"):
        if flag in sys.argv:
            i = sys.argv.index(flag)
            if i + 1 < len(sys.argv) and not sys.argv[i + 1].startswith("--"):
                sort = sys.argv[i + 1]

    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000)
    log_dir = tempfile.mkdtemp(prefix="okws-log-cpu-")
    config = parse(
        f"[okws]\nmax_requests_per_connection = 1000000000\nlog_dir = {log_dir}\n"
        "[service:hello]\nresource = services.plain:Hello\npaths = /hello\n",
        "site.ini",
        "/srv",
    )
    records = RecordSender(reactor, 65536) if log else None
    runtime = ServiceRuntime(reactor, config, config.services[0], 0, Hello(), records=records)
    client, server = socket.socketpair()
    runtime.adopt(handoff.Connection(1, os.dup(server.fileno()), PEER, HOST, b""))
    server.close()
    [conn] = runtime.connections
    client.setblocking(False)

    daemon = None
    if records is not None and "--no-daemon" not in sys.argv:
        me = Sender(name="logd", role="logd", pid=2, run="run1")
        writer = LogWriter(config, me, reactor, current_run="run1")
        writer.start()
        daemon = LogDaemon(reactor, writer)
        ours, theirs = socketpair()
        records.attach(ours)
        daemon.peer("log", {"name": "hello.0", "role": "service", "pid": 3, "run": "run1", "service": "hello", "index": 0}, theirs)
        [link] = daemon.links.values()
        to_daemon = select.poll()
        to_daemon.register(theirs.fileno(), select.POLLIN)
        to_instance = select.poll()
        to_instance.register(ours.fileno(), select.POLLIN)

    instance_profile = cProfile.Profile() if profile_instance else None
    logd_profile = cProfile.Profile() if profile_logd else None
    clock = time.process_time
    best_instance = best_logd = float("inf")
    records_written = 0
    for _ in range(7):
        t_instance = t_logd = 0.0
        for _ in range(ROUND):
            t0 = clock()
            if instance_profile is not None:
                instance_profile.enable()
            conn.dataReceived(REQUEST)
            reactor.advance(0)  # twisted.web's zero-delay calls, and a full batch's flush
            if instance_profile is not None:
                instance_profile.disable()
            try:
                while client.recv(65536):
                    pass
            except BlockingIOError:
                pass
            if daemon is None and records is not None and records.buffer.sealed:
                records.buffer.ack(records.buffer.next_seq - 1)  # --no-daemon: as if acknowledged
            t_instance += clock() - t0
            if daemon is not None and to_daemon.poll(0):
                t0 = clock()
                if logd_profile is not None:
                    logd_profile.enable()
                link.channel.doRead()
                if logd_profile is not None:
                    logd_profile.disable()
                t_logd += clock() - t0
                if to_instance.poll(0):
                    t0 = clock()
                    if instance_profile is not None:
                        instance_profile.enable()
                    records.channel.doRead()  # type: ignore[union-attr]
                    if instance_profile is not None:
                        instance_profile.disable()
                    t_instance += clock() - t0
        if not conn.transport.connected:
            raise SystemExit("the instance closed the connection")
        best_instance = min(best_instance, t_instance)
        best_logd = min(best_logd, t_logd)
    if daemon is not None:
        written = os.path.getsize(os.path.join(log_dir, "access.log"))
        with open(os.path.join(log_dir, "access.log"), "rb") as f:
            records_written = f.read().count(b"\n")
        if records_written < 7 * ROUND - 256:
            raise SystemExit(f"the daemon wrote {records_written} lines ({written} bytes), expected ~{7 * ROUND}")
    shutil.rmtree(log_dir, ignore_errors=True)
    print(
        f"instance{' (access log)' if log else ''}: {best_instance / ROUND * 1e6:.1f} us CPU per keep-alive request"
        + (f"; log daemon: {best_logd / ROUND * 1e6:.2f} us per record" if daemon is not None else "")
        + f" (best of 7 x {ROUND}, client included)"
    )
    for profile, what in ((logd_profile, "log daemon"), (instance_profile, "instance")):
        if profile is not None:
            print(f"--- {what}, cProfile, sorted by {sort}")
            pstats.Stats(profile).sort_stats(sort).print_stats(*(sys.argv[sys.argv.index("--filter") + 1:] if "--filter" in sys.argv else [25]))


if __name__ == "__main__":
    main()
