"""
The database proxy's round trip inside a real service, as ``bench/run.py --db`` measures it, without the rest of the run.

Starts the bench's okws database site once (L{run.OkwsDbSite}: the launcher, the
jailed service ``row`` running L{dbpage.Row}, the proxy of ``[db:bench]``) and
asks ``GET /row/rt`` for C{--repeat} measurements of C{--n} calls at C{--rate}
per second, printing each one's percentiles and the machine's load.  The code
measured is the tree this script sits in (for another tree, run its copy:
``cp bench/db_service_rt.py /tmp/snap/bench/ && .venv/bin/python /tmp/snap/bench/db_service_rt.py``).
``bench/db_roundtrip.py`` measures the same round trip with no service around it.

    .venv/bin/python bench/db_service_rt.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import run

    work = tempfile.mkdtemp(prefix="okws-service-rt-")
    site = run.OkwsDbSite(os.path.join(work, "okws-db"), None)
    try:
        site.start()
        site.check()
        for _ in range(args.repeat):
            rt = run.round_trips(site, args.n, args.rate)
            print(f"service round trip, {args.n} calls at {args.rate}/s: p50 {rt['p50_us']:.0f} us, "
                  f"p90 {rt['p90_us']:.0f} us, p99 {rt['p99_us']:.0f} us; load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        site.stop()


if __name__ == "__main__":
    main()
