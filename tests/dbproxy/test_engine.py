"""
Tests for L{okws_twisted.dbproxy.engine} and L{okws_twisted.dbproxy.pool}: one call on one
connection, on a real SQLite file and a real PostgreSQL server (a throwaway cluster, started
once for the class).  Nothing is mocked.
"""

from __future__ import annotations

import datetime
import decimal
import os
import sqlite3
import tempfile
import threading
import time
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.dbproxy import engine
from okws_twisted.dbproxy.pool import Database, DatabaseOpenError
from okws_twisted.sqlqueries import parse
from okws_twisted.wire import dbvalues
from okws_twisted.wire.dbchannel import FAILED, OK, UNAVAILABLE
from tests.pgcluster import PostgresCluster
from tests.sites.database import POSTGRESQL_SCHEMA, POSTGRESQL_SLOW, QUERIES, SQLITE_SCHEMA, SQLITE_SLOW, VALUES, same


class PgSqlTests(SynchronousTestCase):
    """C{:name} becomes C{%(name)s}; a literal % is doubled; strings, identifiers, casts and comments stay."""

    def test_conversions(self) -> None:
        for sql, expected in (
            ("SELECT :a, :b_2", "SELECT %(a)s, %(b_2)s"),
            ("SELECT 10 % :x", "SELECT 10 %% %(x)s"),
            ("SELECT * FROM t WHERE a LIKE 'x%' AND b = :p", "SELECT * FROM t WHERE a LIKE 'x%%' AND b = %(p)s"),
            ("SELECT ':notaparam', :x::text", "SELECT ':notaparam', %(x)s::text"),
            ("SELECT 'it''s :x' FROM \"odd:col\"", "SELECT 'it''s :x' FROM \"odd:col\""),
            ("SELECT 1 -- don't :x %\n, :y", "SELECT 1 -- don't :x %%\n, %(y)s"),
            ("SELECT /* :x's */ :y", "SELECT /* :x's */ %(y)s"),
        ):
            self.assertEqual(engine.pg_sql(sql), expected, sql)


class RunningTests(SynchronousTestCase):
    def test_cancelled_before_it_starts_never_starts(self) -> None:
        running = engine.Running()
        running.handed("k")
        running.cancel("k")
        self.assertFalse(running.start("k", object()))
        self.assertFalse(running.cancelled("k"))

    def test_late_cancel_is_ignored(self) -> None:
        """A cancel after the call finished must not touch the connection's next call."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        running = engine.Running()
        self.assertTrue(running.start("k", conn))
        self.assertFalse(running.finish("k"))
        running.cancel("k")
        self.assertEqual(conn.execute("SELECT 1").fetchone(), (1,))
        self.assertTrue(running.start("k2", conn))
        self.assertFalse(running.finish("k2"))


class EngineMixin:
    """What both engines do alike, through L{engine.execute}."""

    engine_name: str
    connect: Any

    def setUp(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        slow = SQLITE_SLOW if self.engine_name == "sqlite" else POSTGRESQL_SLOW
        self.queries = parse(QUERIES + slow, "queries.sql")
        self.conn = self.connect()
        case.addCleanup(self.conn.close)
        self.running = engine.Running()

    def sql(self, name: str) -> str:
        text = self.queries[name].sql
        return engine.pg_sql(text) if self.engine_name == "postgresql" else text

    def call(self, name: str, params: Any = None, key: object = "k", max_result: int = 8 * 1024 * 1024) -> tuple[str, Any]:
        query = self.queries[name]
        if params is None:
            params = {}
        wire = [dbvalues.check_params(p) for p in params] if query.many else dbvalues.check_params(params)
        decoded = [dbvalues.decode_params(w) for w in wire] if query.many else dbvalues.decode_params(wire)
        status, value = engine.execute(engine.OneConnection(self.conn), query, self.sql(name), decoded, self.running,
                                       key, max_result, 5.0, 5.0)
        return status, (dbvalues.loads(value) if status == OK else value)

    def test_every_suffix(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(self.call("add_name", {"name": "one"}), (OK, 1))
        status, row = self.call("add_name_returning", {"name": "two"})
        case.assertEqual((status, row["c"], row["r"][0][1]), (OK, ["id", "name"], "two"))
        case.assertEqual(self.call("add_names", [{"name": "m1"}, {"name": "m2"}, {"name": "m3"}]), (OK, 3))
        case.assertEqual(self.call("count_names"), (OK, 5))
        status, rows = self.call("names_like", {"pattern": "m%"})
        case.assertEqual(rows, {"c": ["name"], "r": [["m1"], ["m2"], ["m3"]]})
        case.assertEqual(self.call("get_name", {"id": 10**9}), (OK, None))
        case.assertEqual(self.call("rename", {"id": 10**9, "name": "x"}), (OK, 0))
        case.assertEqual(self.call("percent"), (OK, 0))
        status, new_id = self.call("add_value", VALUES[2])
        case.assertEqual((status, type(new_id)), (OK, int), "<! with RETURNING id: the id itself, on both engines")

    def test_every_type(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for row in VALUES:
            status, new_id = self.call("add_value", row)
            case.assertEqual(status, OK, new_id)
            status, got = self.call("get_value", {"id": new_id})
            back = dbvalues.decode_rows(got)[0]
            for key, sent in row.items():
                case.assertTrue(same(sent, back[key], self.engine_name), f"{key}: sent {sent!r}, got {back[key]!r}")

    def test_unique_violation_rolls_back(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(self.call("add_name", {"name": "dup"})[0], OK)
        status, message = self.call("add_names", [{"name": "fresh"}, {"name": "dup"}])
        case.assertEqual(status, FAILED)
        case.assertIn("unique", message.lower())
        case.assertEqual(self.call("names_like", {"pattern": "fresh"}), (OK, {"c": ["name"], "r": []}))
        case.assertEqual(self.call("count_names"), (OK, 1), "the connection is usable after the rollback")

    def test_result_too_large(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for i in range(50):
            self.call("add_name", {"name": f"{i}-" + "x" * 1000})
        status, message = self.call("all_names", max_result=10_000)
        case.assertEqual(status, FAILED)
        case.assertRegex(message, r"result too large \(\d+ bytes; max_result_bytes is 10000\)")

    def test_cancel_stops_the_query_in_the_database(self) -> None:
        """Cancelled from another thread (the reactor's), a long query stops; the connection lives on."""
        case: SynchronousTestCase = self  # type: ignore[assignment]
        params = {"n": 10**12} if self.engine_name == "sqlite" else {"n": 30}
        result: list[Any] = []
        started = time.monotonic()
        worker = threading.Thread(target=lambda: result.append(self.call("slow", params, key="long")))
        worker.start()
        deadline = time.monotonic() + 10
        while not len(self.running) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        self.running.cancel("long")
        worker.join(10)
        case.assertFalse(worker.is_alive())
        case.assertEqual(result[0][0], UNAVAILABLE, result)
        case.assertIn("cancelled in the database", result[0][1])
        case.assertLess(time.monotonic() - started, 5)
        case.assertEqual(self.call("slow", {"n": 1} if self.engine_name == "sqlite" else {"n": 0}), (OK, 1))


class SQLiteEngineTests(EngineMixin, SynchronousTestCase):
    engine_name = "sqlite"

    def connect(self) -> sqlite3.Connection:
        path = os.path.join(tempfile.mkdtemp(), "t.db")
        conn = engine.sqlite_connect(path, 5.0)
        conn.executescript(SQLITE_SCHEMA)
        return conn

    def test_wal_and_busy(self) -> None:
        self.assertEqual(self.conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.conn.execute("PRAGMA synchronous").fetchone()[0], 1)  # NORMAL
        self.assertEqual(self.conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)

    def test_decimal_affinity_trap(self) -> None:
        """A column declared DECIMAL has NUMERIC affinity: 1.10 comes back 1.1; DECIMAL TEXT keeps it (documented)."""
        self.conn.execute("CREATE TABLE money (a DECIMAL, b DECIMAL TEXT)")
        self.conn.execute("INSERT INTO money VALUES (?, ?)", (decimal.Decimal("1.10"), decimal.Decimal("1.10")))
        a, b = self.conn.execute("SELECT a, b FROM money").fetchone()
        self.assertEqual((str(a), str(b)), ("1.1", "1.10"))

    def test_big_int_is_the_databases_error(self) -> None:
        status, message = self.call("add_value", dict(VALUES[2], i=2**64))
        self.assertEqual(status, FAILED)
        self.assertIn("too large", message)


class PostgresEngineTests(EngineMixin, SynchronousTestCase):
    engine_name = "postgresql"
    cluster: PostgresCluster | None = None
    if not PostgresCluster.available():
        skip = "PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does)"

    @classmethod
    def info(cls) -> Any:
        if cls.cluster is None:
            import atexit

            cls.cluster = PostgresCluster()
            cls.cluster.start()
            atexit.register(cls.cluster.stop)
            import psycopg

            with psycopg.connect(cls.cluster.info.dsn(), autocommit=True) as conn:  # type: ignore[union-attr]
                conn.execute(POSTGRESQL_SCHEMA)  # type: ignore[arg-type]
        return cls.cluster.info

    def connect(self) -> Any:
        import psycopg

        info = self.info()
        conn = psycopg.connect(info.tcp_url(), password=info.password, **engine.pg_connect_kwargs(5.0))
        for table in ("vals", "names", "tokens"):
            conn.execute(f"TRUNCATE {table}")  # type: ignore[arg-type]
        conn.commit()
        return conn

    def test_statement_timeout_in_the_server(self) -> None:
        """query_timeout is also the session's statement_timeout: the server stops a slow statement itself."""
        import psycopg

        info = self.info()
        conn = psycopg.connect(info.tcp_url(), password=info.password, **engine.pg_connect_kwargs(0.5))
        self.addCleanup(conn.close)
        started = time.monotonic()
        status, message = engine.execute(engine.OneConnection(conn), self.queries["slow"], self.sql("slow"), {"n": 5},
                                         self.running, "s", 1000, 0.5, 0.5)
        self.assertEqual((status, message), (UNAVAILABLE, "cancelled in the database after query_timeout (0.5s)"))
        self.assertLess(time.monotonic() - started, 3)

    def test_a_value_the_channel_does_not_carry(self) -> None:
        query = parse("-- name: t()$\nSELECT gen_random_uuid();\n", "q.sql")["t"]
        status, message = engine.execute(engine.OneConnection(self.conn), query, query.sql, {}, self.running, "u",
                                         1000, 5.0)
        self.assertEqual(status, FAILED)
        self.assertIn("cast it in the SQL", message)

    def test_server_restart_is_survived(self) -> None:
        """After a restart every pooled connection is dead: the call runs again on a fresh one."""
        import psycopg

        info = self.info()

        class Pool:
            conn: Any = None

            def connect(self) -> Any:
                if self.conn is None:
                    self.conn = psycopg.connect(info.tcp_url(), password=info.password, **engine.pg_connect_kwargs(5.0))
                return self.conn

            def disconnect(self, conn: Any) -> None:
                conn.close()
                self.conn = None

        pool = Pool()
        self.addCleanup(lambda: pool.conn.close() if pool.conn else None)
        count = self.queries["count_names"]
        self.assertEqual(engine.execute(pool, count, count.sql, {}, self.running, "a", 1000, 5.0, 5.0)[0], OK)
        assert self.cluster is not None
        self.cluster.restart()
        self.assertEqual(engine.execute(pool, count, count.sql, {}, self.running, "b", 1000, 5.0, 5.0), (OK, b"0"))

    def test_aware_datetime_keeps_its_instant(self) -> None:
        """PostgreSQL's timestamptz keeps the instant, not the offset (documented)."""
        sent = datetime.datetime(2024, 7, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
        status, new_id = self.call("add_value", dict(VALUES[2], tz=sent))
        back = dbvalues.decode_rows(self.call("get_value", {"id": new_id})[1])[0]["tz"]
        self.assertEqual(back, sent)


class DatabasePrepareTests(SynchronousTestCase):
    """L{Database.prepare}: the directory, the schema at each start, queries checked against it."""

    def config(self, folder: str, schema: str, queries: str = QUERIES) -> DatabaseConfig:
        return DatabaseConfig(name="main", url="sqlite:///data/x.db", queries="/q.sql", path=os.path.join(folder, "x.db"),
                              schema="/s.sql", queries_text=queries, schema_text=schema)

    def test_creates_and_runs_schema_twice(self) -> None:
        folder = os.path.join(tempfile.mkdtemp(), "data")
        old = os.umask(0o077)
        try:
            for _ in range(2):  # idempotent: it runs at every start
                Database(self.config(folder, SQLITE_SCHEMA)).prepare(parse(QUERIES, "q"))
        finally:
            os.umask(old)
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(folder, "x.db")).st_mode & 0o777, 0o600)

    def test_broken_schema(self) -> None:
        folder = os.path.join(tempfile.mkdtemp(), "data")
        with self.assertRaises(DatabaseOpenError) as cm:
            Database(self.config(folder, "CREATE TABLE t (;")).prepare(parse(QUERIES, "q"))
        self.assertIn("the schema /s.sql failed", str(cm.exception))

    def test_query_that_does_not_compile_is_a_warning(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        folder = os.path.join(tempfile.mkdtemp(), "data")
        queries = QUERIES + "\n-- name: broken(x)$\nSELECT nosuchcolumn FROM names WHERE id = :x;\n"
        Database(self.config(folder, SQLITE_SCHEMA, queries)).prepare(parse(queries, "q"))
        warned = [e for e in events if e.get("log_level") == LogLevel.warn and e.get("query") == "broken"]
        self.assertEqual(len(warned), 1)
        self.assertIn("nosuchcolumn", str(warned[0]["error"]))
