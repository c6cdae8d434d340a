"""
The database proxy under faults: killed with SIGKILL mid-write, PostgreSQL restarted under load,
a query that outlives C{query_timeout}.

Real processes and real databases: the SQLite file is read by the test
itself (read-only), PostgreSQL's own C{pg_stat_activity} says whether a
query still runs.  Each test bounds every wait.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from typing import Any


from tests.e2e import E2ETestCase, Site, process_exists, wait_until
from tests.pgcluster import PostgresCluster
from tests.sites.database import write_database_files
from tests.test_e2e_database import post

SERVICES = """
[service:a]
resource = tests.sites.database:Calls
paths = /a
db = main
queries = add_token add_token_padded count_tokens slow

[service:b]
resource = tests.sites.database:Calls
paths = /b
db = main
queries = add_token count_tokens
"""


def sqlite_site(testcase: E2ETestCase, settings: str) -> tuple[Site, str]:
    """The two services on a started site with C{[db:main]} in SQLite (C{settings} added to it), and the file's path."""
    site = Site(SERVICES, "")  # the default restart_delay_min (1 s)
    write_database_files(site.dir, "sqlite")
    with open(site.ini, "a") as f:
        f.write("\n[db:main]\nurl = sqlite:///data/site.db\nqueries = sql/queries.sql\nschema = sql/schema.sql\n"
                + settings)
    testcase.addCleanup(site.close)
    site.start()
    return site, os.path.join(site.dir, "data", "site.db")


def token_rows(path: str) -> int:
    """How many tokens the SQLite file holds, read by the test itself (read-only)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM tokens").fetchone()[0]


class Burst(threading.Thread):
    """One service's paced writes (C{add_token}), in a thread; C{answer} once done."""

    def __init__(self, site: Site, path: str, n: int, window: int, pace: float, pad: int = 0) -> None:
        super().__init__(daemon=True)
        self.site, self.path = site, path
        self.command = {"op": "burst", "query": "add_token_padded" if pad else "add_token", "n": n,
                        "prefix": path.strip("/"), "service": path, "window": window, "pace": pace, "pad": pad}
        self.answer: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.answer = post(self.site, self.path, self.command, timeout=120)
        except BaseException as e:  # shown by result(), in the test's thread
            self.error = e

    def result(self, timeout: float = 120) -> dict[str, Any]:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"the burst on {self.path} did not finish within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"the burst on {self.path} got no answer: {self.error!r}")
        return self.answer


class ProxyKilledTests(E2ETestCase):
    """kill -9 of the SQLite proxy during 1,000 writes."""

    def test_kill_9_during_1000_writes(self) -> None:
        site, path = sqlite_site(self, "queue_max = 1000\nquery_timeout = 5\n")
        pids = site.pids()
        proxy = pids["db.main"]

        # Each write answers with 1 MB of padding: the proxy spends a while between a commit and
        # its reply, so the kill often falls there, where a client that resent calls would write twice.
        burst = Burst(site, "/a", 1000, window=4, pace=0.004, pad=1_000_000)
        burst.start()
        wait_until(lambda: token_rows(path) >= 150, 60, "150 writes")
        mark = site.mark()
        os.kill(proxy, signal.SIGKILL)
        at_kill = token_rows(path)
        killed = time.monotonic()
        site.wait_for(r"db\.main pid \d+ is ready", timeout=30, after=mark)
        back = time.monotonic() - killed
        answer = burst.result()

        acked = answer["acked"]
        failed = {k: v for k, v in answer["failed"].items() if k != "messages"}
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            stored = dict(conn.execute("SELECT token, count(*) FROM tokens GROUP BY token").fetchall())
        self.assertEqual([t for t, n in stored.items() if n != 1], [], "nothing written twice")
        self.assertEqual([t for t in acked if stored.get(t) != 1], [], "every acknowledged write, exactly once")
        self.assertLess(at_kill, 1000, "the kill happened during the writes")
        self.assertGreater(len(acked), at_kill, "writes went on after the kill, to the new proxy")
        self.assertEqual(set(failed) - {"DatabaseUnavailable"}, set(), answer["failed"])
        self.assertEqual(len(acked) + sum(failed.values()), 1000)
        self.assertLessEqual(len(stored) - len(acked), 4, "at most the calls in flight at the kill are unknown")
        self.assertLess(back, 2.0, f"the proxy was back after {back:.2f}s")

        # The services were not relaunched: they reconnected to the new proxy.
        now = site.pids()
        self.assertNotEqual(now["db.main"], proxy)
        self.assertFalse(process_exists(proxy))
        self.assertEqual((now["a.0"], now["b.0"]), (pids["a.0"], pids["b.0"]))
        self.assertEqual(int(post(site, "/b", {"op": "call", "query": "count_tokens"})["result"]), len(stored))


class ProxyRelaunchedTests(E2ETestCase):
    """okws-ctl relaunch db.main during 1,000 writes: graceful, so nothing fails and nothing is lost."""

    def test_relaunch_during_1000_writes(self) -> None:
        from tests.test_e2e_operations import ctl

        site, path = sqlite_site(self, "queue_max = 1000\nquery_timeout = 5\n")
        pids = site.pids()
        proxy = pids["db.main"]

        # As for kill -9: each answer carries 1 MB, so calls are often between their commit and
        # their reply when the services move to the new proxy; one resent would be written twice.
        burst = Burst(site, "/a", 1000, window=4, pace=0.004, pad=1_000_000)
        burst.start()
        wait_until(lambda: token_rows(path) >= 150, 60, "150 writes")
        mark = site.mark()
        p = ctl(site, "relaunch", "db:main")  # the section's name; db.main (status's) works too
        self.assertEqual((p.returncode, p.stdout), (0, "relaunching db.main\n"), p.stderr)
        at_relaunch = token_rows(path)
        site.wait_for(r"db\.main pid %d exited after retiring" % proxy, timeout=30, after=mark)
        try:
            answer = burst.result()
        except AssertionError as e:
            raise AssertionError(f"{e}; log:\n{site.log_text()}") from None

        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            stored = dict(conn.execute("SELECT token, count(*) FROM tokens GROUP BY token").fetchall())
        self.assertEqual(answer["failed"], {}, "a graceful relaunch fails no call")
        self.assertEqual(len(answer["acked"]), 1000)
        self.assertEqual([t for t, n in stored.items() if n != 1], [], "nothing written twice")
        self.assertEqual(set(stored), set(answer["acked"]), "every write acknowledged, exactly once")
        self.assertLess(at_relaunch, 1000, "the relaunch happened during the writes")
        now = site.pids()
        self.assertNotEqual(now["db.main"], proxy)
        self.assertFalse(process_exists(proxy))
        self.assertEqual((now["a.0"], now["b.0"]), (pids["a.0"], pids["b.0"]), "the services were not relaunched")
        p = ctl(site, "relaunch", "db.main")
        self.assertEqual((p.returncode, p.stdout), (0, "relaunching db.main\n"), p.stderr)
        self.assertEqual(int(post(site, "/b", {"op": "call", "query": "count_tokens"})["result"]), 1000)


class QueryTimeoutSQLiteTests(E2ETestCase):
    """A query past query_timeout is stopped in SQLite: the pool's only connection is free at once."""

    def test_interrupted(self) -> None:
        site, _path = sqlite_site(self, "pool = 1\nquery_timeout = 1\n")
        started = time.monotonic()
        slow = post(site, "/a", {"op": "call", "query": "slow", "params": {"n": 10**12}})
        took = time.monotonic() - started
        self.assertEqual(slow["error"], "DatabaseUnavailable", slow)
        self.assertIn("cancelled in the database after query_timeout (1s)", slow["message"])
        self.assertLess(took, 4.0)
        started = time.monotonic()
        self.assertEqual(post(site, "/a", {"op": "call", "query": "slow", "params": {"n": 10}})["result"], "10")
        self.assertLess(time.monotonic() - started, 1.0, "the one connection was free again")


class PostgresFaultTests(E2ETestCase):
    if not PostgresCluster.available():
        skip = "PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does)"

    def site(self, extra: str = "") -> tuple[Site, PostgresCluster]:
        cluster = PostgresCluster()
        info = cluster.start()
        self.addCleanup(cluster.stop)
        site = Site(SERVICES, "restart_delay_min = 0.2\n")
        write_database_files(site.dir, "postgresql")
        with open(os.path.join(site.dir, "db.password"), "w") as f:
            f.write(info.password + "\n")
        with open(site.ini, "a") as f:
            f.write(f"\n[db:main]\nurl = {info.tcp_url()}\npassword_file = db.password\nqueries = sql/queries.sql\n"
                    f"schema = sql/schema.sql\n{extra}")
        self.addCleanup(site.close)
        site.start()
        return site, cluster

    def test_restart_under_load(self) -> None:
        """PostgreSQL restarts while two services write: the proxy reconnects; only calls in flight may fail."""
        site, cluster = self.site("queue_max = 1000\nquery_timeout = 5\n")
        proxy = site.pids()["db.main"]
        bursts = [Burst(site, path, 600, window=4, pace=0.005) for path in ("/a", "/b")]
        for burst in bursts:
            burst.start()
        wait_until(lambda: int(post(site, "/b", {"op": "call", "query": "count_tokens"})["result"]) >= 200, 60,
                   "200 writes")
        cluster.restart()
        answers = [burst.result() for burst in bursts]
        for answer in answers:
            failed = {k: v for k, v in answer["failed"].items() if k != "messages"}
            self.assertEqual(set(failed) - {"DatabaseUnavailable"}, set(), answer["failed"])
            self.assertLessEqual(sum(failed.values()), 8, answer["failed"])
            self.assertEqual(len(answer["acked"]) + sum(failed.values()), 600)
        acked = sum(len(a["acked"]) for a in answers)
        self.assertGreater(acked, 1000)
        stored = int(post(site, "/a", {"op": "call", "query": "count_tokens"})["result"])
        self.assertGreaterEqual(stored, acked)
        self.assertEqual(site.pids()["db.main"], proxy, "the proxy reconnected; it was not relaunched")

    def test_query_cancelled_in_the_database(self) -> None:
        """Past query_timeout the caller gets DatabaseUnavailable, and the server no longer runs the query."""
        import psycopg

        site, cluster = self.site("query_timeout = 1\n")
        assert cluster.info is not None
        started = time.monotonic()
        slow = post(site, "/a", {"op": "call", "query": "slow", "params": {"n": 30}})
        took = time.monotonic() - started
        self.assertEqual(slow["error"], "DatabaseUnavailable", slow)
        self.assertLess(took, 5.0)

        def sleeping() -> list[Any]:
            with psycopg.connect(cluster.info.dsn(), autocommit=True) as conn:  # type: ignore[union-attr]
                return conn.execute("SELECT pid, state FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
                                    "AND state = 'active' AND pid <> pg_backend_pid()").fetchall()

        wait_until(lambda: not sleeping(), 1.0, "pg_sleep still active in the server", interval=0.05)
        self.assertEqual(post(site, "/a", {"op": "call", "query": "count_tokens"})["type"], "int")
