"""
The CPU of one database call on the service's side and in the codec, in a hot loop, in process.

``bench/db_roundtrip.py`` times a call across two processes, wake-ups included; this times the
Python each side runs, with nothing else around it, so two versions of the code compare in
seconds on a busy machine.  One L{DatabaseClient} (the author's C{self.db}) on one end of a real
seqpacket pair, its reactor a clock (nothing waits); the other end is played here by what
C{db_roundtrip.py --echo}'s child does (the codec: C{recv}, L{channel.decode}, L{parse_calls},
L{reply_ok}, L{replies}, L{channel.encode}, C{send}).  Each round: the call until its C{send}
returned ("call"), the echo's work ("echo"), the client's channel read until the result's
callback ran ("reply").  Best of 7 rounds of 20,000 calls, microseconds per call.
C{--profile}: instead, cProfile of 50,000 calls (the 30 largest by own time).

    .venv/bin/python bench/db_client_cpu.py [--profile]
    PYTHONPATH=/tmp/snap .venv/bin/python bench/db_client_cpu.py   # another tree's code
"""

from __future__ import annotations

import argparse
import socket
import time

ROUND = 20_000


def setup():  # type: ignore[no-untyped-def]
    from twisted.internet.testing import MemoryReactorClock

    from okws_twisted.config.databases import DatabaseConfig
    from okws_twisted.service.dbclient import DatabaseClient
    from okws_twisted.wire import channel, dbchannel
    from okws_twisted.wire.channel import Message, decode, encode

    reactor = MemoryReactorClock()
    config = DatabaseConfig(name="rt", url="sqlite:///rt.db", queries="/q.sql", path="/rt.db")
    client = DatabaseClient(reactor, config)
    ours, theirs = channel.socketpair()
    client.set_channel(ours)
    theirs.setblocking(True)
    theirs.send(encode(*dbchannel.grants({"one": dbchannel.Grant("$", ())}))[0])
    chan = client._channel
    chan.doRead()
    assert client.ready
    got: list[object] = []
    keep = got.append

    def echo() -> None:
        data = theirs.recv(1 << 16)
        meta, payload = decode(data)
        msg = Message(meta["k"], meta, payload)
        entries = [dbchannel.reply_ok(call.id, b"1") for call in dbchannel.parse_calls(msg)]
        for datagram in encode(*dbchannel.replies(entries)):
            theirs.send(datagram)

    def one() -> None:
        client.call("one", (), {}).addCallback(keep)
        echo()
        chan.doRead()

    return client, chan, echo, keep, got, one


def measure() -> dict[str, float]:
    client, chan, echo, keep, got, _one = setup()
    clock = time.perf_counter_ns
    call = client.call
    best = {"call": float("inf"), "echo": float("inf"), "reply": float("inf")}
    for _ in range(7):
        spent = {"call": 0, "echo": 0, "reply": 0}
        for _ in range(ROUND):
            t0 = clock()
            call("one", (), {}).addCallback(keep)
            t1 = clock()
            echo()
            t2 = clock()
            chan.doRead()
            t3 = clock()
            spent["call"] += t1 - t0
            spent["echo"] += t2 - t1
            spent["reply"] += t3 - t2
        if len(got) != ROUND or got[-1] != 1:
            raise SystemExit(f"{len(got)} results of {ROUND}, the last {got[-1:]}")
        got.clear()
        for k, v in spent.items():
            best[k] = min(best[k], v / ROUND / 1000)
    return best


def profile() -> None:
    import cProfile
    import pstats

    _client, _chan, _echo, _keep, got, one = setup()
    for _ in range(1000):
        one()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50_000):
        one()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile()
        return
    best = measure()
    total = sum(best.values())
    print(f"us per call (best of 7 x {ROUND}): call -> sent {best['call']:.2f}, echo {best['echo']:.2f}, "
          f"read -> result {best['reply']:.2f}; client {best['call'] + best['reply']:.2f}, all {total:.2f}")


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()
