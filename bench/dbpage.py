"""
The page of ``bench/run.py --db``: one SELECT by primary key, through okws's database proxy or in process.

L{Row} is the okws service: ``GET /row?id=N`` runs the named query C{get_item}
(L{QUERIES}) through C{self.db}, the service's database proxy.  L{PeerRow} is
the same page for plain twisted.web: the same SELECT on the same SQLite file,
in the peer's own process, through C{twisted.enterprise.adbapi} (a pool of the
same size).  Both answer the same bytes.

``GET /row/rt?n=2000&rate=1000`` (okws only) measures the proxy's round trip
from inside the service: C{n} calls of a trivial query (C{SELECT 1}), one every
C{1/rate} seconds, each timed from the call to its result; it answers the
latencies' percentiles as JSON.  The harness copies this file into the
benchmarked site's directory (the service imports it from there).
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import defer, reactor, task
from twisted.web.resource import Resource

from okws_twisted import ServiceResource

QUERIES = """\
-- name: get_item(id)^
SELECT id, name, price FROM items WHERE id = :id;

-- name: one()$
SELECT 1;
"""

SCHEMA = """\
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price INTEGER NOT NULL);
INSERT OR IGNORE INTO items (id, name, price)
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
    SELECT i, 'item ' || i, i * 7 FROM n;
"""

SELECT = "SELECT id, name, price FROM items WHERE id = ?"


def page(row: dict | tuple | None) -> bytes:
    if row is None:
        return b"<p>no such item</p>"
    if isinstance(row, dict):
        row = (row["id"], row["name"], row["price"])
    return b"<p>%d: %s costs %d</p>" % (row[0], row[1].encode(), row[2])


def _item(request) -> int:
    try:
        return int(request.args.get(b"id", [b"1"])[0])
    except ValueError:
        return 1


class Row(ServiceResource):
    """okws: the SELECT through the database proxy."""

    isLeaf = True

    async def render_GET(self, request):
        if request.postpath and request.postpath[0] == b"rt":
            return await self.round_trips(request)
        return page(await self.db.get_item(id=_item(request)))

    async def round_trips(self, request):
        n = int(request.args.get(b"n", [b"2000"])[0])
        rate = float(request.args.get(b"rate", [b"1000"])[0])
        latencies: list[float] = []

        def one() -> defer.Deferred:
            started = time.perf_counter()
            return self.db.one().addCallback(lambda _: latencies.append(time.perf_counter() - started))

        calls = []
        started = time.perf_counter()
        for i in range(n):
            calls.append(one())
            # Paced by the clock, not by the previous answer: rate calls per second.
            wait = started + (i + 1) / rate - time.perf_counter()
            await task.deferLater(reactor, max(0.0, wait), lambda: None)
        await defer.gatherResults(calls)
        elapsed = time.perf_counter() - started
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6

        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"n": n, "rate": n / elapsed, "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
                           "max_us": latencies[-1] * 1e6}).encode()


class PeerRow(Resource):
    """Plain twisted.web: the same SELECT in process, through adbapi, on the file in C{OKWS_BENCH_DB}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        from twisted.enterprise import adbapi

        pool_size = int(os.environ.get("OKWS_BENCH_POOL", "4"))
        self.pool = adbapi.ConnectionPool("sqlite3", os.environ["OKWS_BENCH_DB"], check_same_thread=False,
                                          cp_min=pool_size, cp_max=pool_size, cp_noisy=False)

    def render_GET(self, request):
        from twisted.web.server import NOT_DONE_YET

        def answer(rows: list[tuple]) -> None:
            body = page(rows[0] if rows else None)
            request.setHeader(b"content-type", b"text/html")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(reason) -> None:
            request.setResponseCode(500)
            request.finish()

        self.pool.runQuery(SELECT, (_item(request),)).addCallbacks(answer, failed)
        return NOT_DONE_YET
