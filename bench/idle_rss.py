"""
An idle service instance's memory (issue 14: < 40 MiB), without the whole benchmark.

Starts bench/run.py's site (the plain hello service, one instance), reads the instance's
VmRSS from /proc/PID/status at start and after C{--requests} GETs (as bench/run.py does at
start and after its runs), and stops the site.

    .venv/bin/python bench/idle_rss.py [--requests 200]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


def main(argv: list[str]) -> None:
    requests = int(argv[argv.index("--requests") + 1]) if "--requests" in argv else 200
    workdir = tempfile.mkdtemp(prefix="okws-idle-")
    site = run.OkwsSite(os.path.join(workdir, "site"), 1)
    site.start()
    try:
        pid = site.processes()["hello.0"]
        time.sleep(1.0)  # settled: nothing of start-up left to run
        start = run.rss_kib(pid)["VmRSS"]
        for _ in range(requests):
            with urllib.request.urlopen(site.url, timeout=10) as resp:
                resp.read()
        time.sleep(0.5)
        after = run.rss_kib(pid)["VmRSS"]
        print(f"hello.0 VmRSS: {start / 1024:.1f} MiB at start, {after / 1024:.1f} MiB after {requests} requests")
    finally:
        site.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
