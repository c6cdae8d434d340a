"""
The database proxy's round trip inside a real service, as ``bench/run.py --db`` measures it, without the rest of the run.

Starts the bench's okws database site once (L{run.OkwsDbSite}: the launcher, the
jailed service ``row`` running L{dbpage.Row}, the proxy of ``[db:bench]``) and
asks ``GET /row/rt`` for C{--repeat} measurements of C{--n} calls at C{--rate}
per second, printing each one's percentiles and the machine's load.  The code
measured is the tree this script sits in (for another tree, run its copy:
``cp bench/db_service_rt.py /tmp/snap/bench/ && .venv/bin/python /tmp/snap/bench/db_service_rt.py``).
``bench/db_roundtrip.py`` measures the same round trip with no service around it.

``--stamps`` serves the page with the service's hops timestamped (its channel's
send and read, the client's reply handling; wrappers around those functions,
as ``db_roundtrip.py --stamps`` does, in the service's process only) and prints
each step's median: what the service's own Python costs, against the time from
the call's send to the reply's read (the proxy and both wake-ups).

``--wrk S`` then loads ``GET /row?id=N`` (one SELECT through the proxy per request) with wrk
for S seconds (``--connections``, 2 threads) and prints requests/s and latency: the same
page as ``run.py --db``'s throughput part, for a quick look (not a quiet machine's figure).

    .venv/bin/python bench/db_service_rt.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# Appended to a copy of dbpage.py (the service loads its resource from one file): L{dbpage.Row} with
# the hops of the service's side timestamped.
STAMPED_ROW = """

import statistics as _statistics

from okws_twisted.service.dbclient import DatabaseClient as _Client
from okws_twisted.wire import channel as _channel

_MARKS: list = []
_STEPS = ("c_call", "c_send", "c_sent", "c_read", "c_received", "c_result")


def _wrap(owner, name, before, after):
    original = getattr(owner, name)

    def wrapper(*a, **kw):
        if before:
            _MARKS.append((before, time.monotonic()))
        try:
            return original(*a, **kw)
        finally:
            if after:
                _MARKS.append((after, time.monotonic()))

    setattr(owner, name, wrapper)


_wrap(_channel.MessageChannel, "doRead", "c_read", None)
_wrap(_channel.MessageChannel, "send", "c_send", "c_sent")
_wrap(_Client, "call", "c_call", None)
_wrap(_Client, "_received", "c_received", None)
_wrap(_Client, "_answered", None, "c_result")  # after the call's callbacks ran


class StampedRow(Row):
    async def round_trips(self, request):
        del _MARKS[:]
        result = json.loads(await super().round_trips(request))
        steps, seen = {}, {}
        for kind, t in _MARKS:
            if kind == "c_call":
                seen = {}
            seen.setdefault(kind, t)
            if kind == "c_result":
                have = [k for k in _STEPS if k in seen]
                for a, b in zip(have, have[1:]):
                    steps.setdefault(a + " -> " + b, []).append((seen[b] - seen[a]) * 1e6)
        result["steps"] = {k: _statistics.median(v) for k, v in steps.items() if len(v) > len(_MARKS) // 12}
        return json.dumps(result).encode()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--stamps", action="store_true", help="timestamp the service's hops (see above)")
    parser.add_argument("--wrk", type=int, default=0, metavar="S", help="then S seconds of wrk on GET /row")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import run

    work = tempfile.mkdtemp(prefix="okws-service-rt-")
    site = run.OkwsDbSite(os.path.join(work, "okws-db"), None)
    if args.stamps:
        with open(os.path.join(HERE, "dbpage.py")) as f:
            page = f.read()
        with open(os.path.join(site.dir, "dbpage_stamped.py"), "w") as f:
            f.write(page + STAMPED_ROW)
        with open(site.ini) as f:
            ini = f.read()
        with open(site.ini, "w") as f:
            f.write(ini.replace("resource = dbpage:Row", "resource = dbpage_stamped:StampedRow"))
    try:
        site.start()
        site.check()
        for _ in range(args.repeat):
            rt = run.round_trips(site, args.n, args.rate)
            print(f"service round trip, {args.n} calls at {args.rate}/s: p50 {rt['p50_us']:.0f} us, "
                  f"p90 {rt['p90_us']:.0f} us, p99 {rt['p99_us']:.0f} us; load {os.getloadavg()[0]:.2f}", flush=True)
            for step, median in rt.get("steps", {}).items():
                print(f"  {step:28} p50 {median:7.1f} us")
        if args.wrk:
            run.run_wrk(site.url, 1, args.connections, 2, False)  # warm-up
            w = run.run_wrk(site.url, args.wrk, args.connections, 2, False)
            print(f"wrk GET /row, {args.connections} connections, {args.wrk} s: {w.rps:.0f} requests/s, "
                  f"p50 {w.p50_ms:.2f} ms, p99 {w.p99_ms:.2f} ms, errors {w.error_count}; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        site.stop()


if __name__ == "__main__":
    main()
