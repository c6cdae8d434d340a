"""
The database proxy's round trip outside the harness: a service's client and a proxy in two processes.

``bench/run.py --db`` measures the round trip from inside a real service
(``GET /row/rt``); this script measures the same thing with nothing else around
it, so two versions of the code can be compared back to back in seconds, and
shows where a call's time goes.  The parent runs a L{DatabaseClient} (the
author's C{self.db}) on one end of a seqpacket pair; the child runs a
L{DatabaseProxy} on the other end, on a SQLite file in a temporary directory,
started exactly as C{okws_twisted.dbproxy.proxy.start_role} starts it.  The
parent calls C{one()} (C{SELECT 1}), one call every C{1/rate} seconds (paced
by the clock), and times each from the call to its result.

``--stamps`` also timestamps each hop (CLOCK_MONOTONIC, which both processes
share), by wrapping functions from here (the code measured is unchanged): the
client's send, the proxy's wake-up (its channel's read), the call admitted,
the query started and ended in a pool thread, the reply sent, the client's
wake-up and the callback.  It prints each step's median.  The wrappers cost a
few microseconds per step; compare the total without them.

    PYTHONPATH=/tmp/snap .venv/bin/python bench/db_roundtrip.py        # another tree's code
    .venv/bin/python bench/db_roundtrip.py --n 3000 --rate 1000 --stamps
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

QUERIES = "-- name: one()$\nSELECT 1;\n"


def run_echo(fd: int) -> None:
    """The child for C{--echo}: no proxy, one blocking thread answering each call C{1} at once,
    through the same codec: the floor under the proxy (the client's side, two wake-ups)."""
    from okws_twisted.wire import dbchannel
    from okws_twisted.wire.channel import Message, decode, encode

    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    sock.send(encode(*dbchannel.grants({"one": dbchannel.Grant("$", ())}))[0])
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        meta, payload = decode(data)
        msg = Message(meta["k"], meta, payload)
        entries = [dbchannel.reply_ok(call.id, b"1") for call in dbchannel.parse_calls(msg)]
        for datagram in encode(*dbchannel.replies(entries)):
            sock.send(datagram)


def run_proxy(fd: int, folder: str, pool: int, stamps: str) -> None:
    """The child: a proxy serving one service, ``rt``, on the channel at C{fd}."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from okws_twisted.config import ServiceConfig, SiteConfig
    from okws_twisted.config.databases import DatabaseConfig
    from okws_twisted.dbproxy.pool import Database
    from okws_twisted.dbproxy.proxy import DatabaseProxy
    from okws_twisted.sqlqueries import parse

    db = DatabaseConfig(name="rt", url="sqlite:///rt.db", queries="/q.sql", path=os.path.join(folder, "rt.db"),
                        pool=pool, queries_text=QUERIES)
    site = SiteConfig(file="site.ini", base_dir=folder, log_dir=folder, templates=folder, databases=(db,),
                      services=(ServiceConfig(name="rt", resource="x:Y", paths=("/rt",), db="rt", queries=("one",)),))
    queries = parse(QUERIES, "q.sql")
    database = Database(db)
    database.prepare(queries)
    os.umask(0o077)
    marks: list[tuple[str, float]] = []
    if stamps:
        _wrap_proxy(marks)
    proxy = DatabaseProxy(reactor, site, db, queries, database, reactor.stop)
    proxy.peer("db", {"role": "service", "service": "rt", "name": "rt.0", "pid": 1}, socket.socket(fileno=fd))

    def done() -> None:
        if stamps:
            with open(stamps, "w") as f:
                json.dump(marks, f)
        proxy.stop()

    # The parent closes its end when it is done.
    proxy.link_lost_original = proxy.link_lost  # type: ignore[attr-defined]

    def lost(link, reason):  # type: ignore[no-untyped-def]
        proxy.link_lost_original(link, reason)  # type: ignore[attr-defined]
        done()

    proxy.link_lost = lost  # type: ignore[method-assign]
    reactor.run()


def _wrap(owner: object, name: str, before: str | None, after: str | None, marks: list[tuple[str, float]]) -> None:
    original = getattr(owner, name)
    now = time.monotonic

    def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
        if before:
            marks.append((before, now()))
        try:
            return original(*a, **kw)
        finally:
            if after:
                marks.append((after, now()))

    setattr(owner, name, wrapper)


def _wrap_proxy(marks: list[tuple[str, float]]) -> None:
    """Stamp the proxy's hops (one call at a time: the steps are matched by order)."""
    from okws_twisted.dbproxy import engine, proxy
    from okws_twisted.wire import channel

    _wrap(channel.MessageChannel, "doRead", "p_read", None, marks)
    _wrap(proxy.DatabaseProxy, "_accept", None, "p_accepted", marks)
    _wrap(engine, "_run", "p_exec", "p_exec_end", marks)
    if hasattr(proxy._Link, "send_now"):
        _wrap(proxy._Link, "send_now", "p_reply", "p_sent", marks)
    if hasattr(proxy._Link, "read_ready"):  # the pool's threads read the channels themselves
        _wrap(proxy._Link, "read_ready", "p_read", None, marks)
    _wrap(proxy.DatabaseProxy, "received", "p_received", None, marks)


def run_client(args: argparse.Namespace) -> dict[str, float]:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import defer, reactor, task

    from okws_twisted.config.databases import DatabaseConfig
    from okws_twisted.service.dbclient import DatabaseClient
    from okws_twisted.wire import channel

    folder = tempfile.mkdtemp(prefix="okws-rt-")
    ours, theirs = channel.socketpair()
    stamps = os.path.join(folder, "stamps.json") if args.stamps else ""
    child = subprocess.Popen(
        [sys.executable, __file__, "--proxy", str(theirs.fileno()), folder, "--pool", str(args.pool),
         "--stamp-file", stamps] + (["--echo"] if args.echo else []),
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    marks: list[tuple[str, float]] = []
    if args.stamps:
        from okws_twisted.wire import channel as ch

        _wrap(ch.MessageChannel, "doRead", "c_read", None, marks)
        _wrap(ch.MessageChannel, "send", "c_send", "c_sent", marks)
        _wrap(DatabaseClient, "_received", "c_received", None, marks)
    config = DatabaseConfig(name="rt", url="sqlite:///rt.db", queries="/q.sql", path=os.path.join(folder, "rt.db"))
    client = DatabaseClient(reactor, config)
    client.set_channel(ours)
    result: dict[str, float] = {}

    async def measure() -> None:
        for _ in range(5000):
            if client.ready:
                break
            await task.deferLater(reactor, 0.001, lambda: None)
        else:
            raise SystemExit("no grants from the proxy within 5 s")
        for _ in range(200):  # warm up
            await client.call("one", (), {})
        del marks[:]
        latencies: list[float] = []
        cpu_before = _cpu(child.pid), _cpu(os.getpid())

        def one() -> defer.Deferred:
            started = time.perf_counter()
            if args.stamps:
                marks.append(("c_call", time.monotonic()))

            def got(_: object) -> None:
                latencies.append(time.perf_counter() - started)
                if args.stamps:
                    marks.append(("c_result", time.monotonic()))

            return client.call("one", (), {}).addCallback(got)

        calls = []
        started = time.perf_counter()
        for i in range(args.n):
            calls.append(one())
            wait = started + (i + 1) / args.rate - time.perf_counter()
            await task.deferLater(reactor, max(0.0, wait), lambda: None)
        await defer.gatherResults(calls)
        elapsed = time.perf_counter() - started
        result["proxy_cpu_us"] = (_cpu(child.pid) - cpu_before[0]) / args.n * 1e6
        result["client_cpu_us"] = (_cpu(os.getpid()) - cpu_before[1]) / args.n * 1e6
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6

        result.update(n=args.n, rate=args.n / elapsed, p50_us=pct(0.5), p90_us=pct(0.9), p99_us=pct(0.99),
                      max_us=latencies[-1] * 1e6)

    def finish(outcome: object) -> None:
        if client._channel is not None:
            client._channel.close()
        reactor.stop()
        return None

    reactor.callWhenRunning(lambda: defer.ensureDeferred(measure()).addBoth(finish))
    reactor.run()
    for c in list(client._sent.values()):  # pragma: no cover - nothing should be left
        print("unanswered", c.id)
    client_marks = marks[:]
    if child.wait(10) != 0 and not args.echo:
        raise SystemExit(f"proxy exited {child.returncode}")
    if args.stamps:
        proxy_marks = []
        if not args.echo:  # the echo child stamps nothing
            with open(stamps) as f:
                proxy_marks = [tuple(m) for m in json.load(f)]
        _report_stamps(client_marks, proxy_marks)
    return result


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) process C{pid} used so far, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report_stamps(client: list, proxy: list) -> None:  # type: ignore[type-arg]
    """Each call's hops, matched by time: every proxy step between a call and its result is that call's."""
    steps: dict[str, list[float]] = {}
    proxy = sorted(proxy, key=lambda m: m[1])
    calls = [t for k, t in client if k == "c_call"]
    events = sorted(client + proxy, key=lambda m: m[1])
    i = 0
    for start in calls:
        while i < len(events) and events[i][1] < start:
            i += 1
        seen: dict[str, float] = {}
        j = i
        while j < len(events) and events[j][0] != "c_result":
            seen.setdefault(events[j][0], events[j][1])
            j += 1
        if j < len(events):
            seen.setdefault("c_result", events[j][1])
        order = ["c_call", "c_send", "c_sent", "p_read", "p_received", "p_accepted", "p_exec", "p_exec_end", "p_reply", "p_sent", "c_read",
                 "c_received", "c_result"]
        have = [k for k in order if k in seen]
        for a, b in zip(have, have[1:]):
            steps.setdefault(f"{a} -> {b}", []).append((seen[b] - seen[a]) * 1e6)
    for name, values in steps.items():
        if len(values) < len(calls) // 2:
            continue  # a step that happens out of order for a few calls only
        values.sort()
        print(f"  {name:28} p50 {values[len(values) // 2]:7.1f} us  (n {len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--stamps", action="store_true", help="timestamp each hop (see the module's docstring)")
    parser.add_argument("--echo", action="store_true",
                        help="no proxy: a blocking thread answering at once (the floor under the proxy)")
    parser.add_argument("--proxy", nargs=2, metavar=("FD", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--stamp-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy and args.echo:
        run_echo(int(args.proxy[0]))
        return
    if args.proxy:
        run_proxy(int(args.proxy[0]), args.proxy[1], args.pool, args.stamp_file)
        return
    result = run_client(args)
    print(f"round trip, {result['n']} calls at {result['rate']:.0f}/s: p50 {result['p50_us']:.0f} us, "
          f"p90 {result['p90_us']:.0f} us, p99 {result['p99_us']:.0f} us, max {result['max_us']:.0f} us; "
          f"CPU per call: {'echo' if args.echo else 'proxy'} {result['proxy_cpu_us']:.0f} us, "
          f"client {result['client_cpu_us']:.0f} us")


if __name__ == "__main__":
    main()
