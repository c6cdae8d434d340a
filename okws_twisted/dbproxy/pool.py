# -*- test-case-name: tests.dbproxy.test_engine -*-
"""
One database as its proxy opens it: the connection pool, the schema, each engine's ways.

SQLite comes with Python (the default: nothing to install); PostgreSQL goes
through psycopg 3, imported only for a C{postgresql:} url (it costs about
10 MiB: see bench/README.md).  Either way the blocking driver runs in the
proxy's pool threads (L{okws_twisted.dbproxy.workers}: C{pool} connections,
shared by C{pool + 1} threads), never on the reactor.

L{Database.prepare} runs before the proxy says it is ready: the SQLite file's
directory is made (0700) and the file created 0600 (the proxy's umask is
077), the C{schema} runs (it must be idempotent: it runs at every start), and
each query is compiled against it (SQLite: C{EXPLAIN}; PostgreSQL: C{PREPARE},
then C{DEALLOCATE}: neither runs it) so a query that names a missing column
is a warning in the error log at start-up, not a surprise at the first
request.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Mapping

from twisted.logger import Logger

from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.dbproxy import engine
from okws_twisted.dbproxy.workers import Workers
from okws_twisted.sqlqueries import NamedQuery


def _psycopg() -> Any:
    """psycopg, imported on first use.

    The bootstrap keeps C{ssl} out of the proxy (L{okws_twisted.bootstrap.UNUSED_MODULES}):
    psycopg's binary and C builds link their own libpq and OpenSSL and do without it (asyncio,
    which psycopg imports, would load it otherwise).  Its pure-Python libpq binding, used
    without either build, imports it: then it may.
    """
    if os.environ.get("PSYCOPG_IMPL") == "python" or (
        importlib.util.find_spec("psycopg_binary") is None and importlib.util.find_spec("psycopg_c") is None
    ):
        for name in ("ssl", "_ssl"):
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    import psycopg

    return psycopg


class DatabaseOpenError(Exception):
    """The database cannot be used (its directory, its password, its schema); the proxy exits."""


class Database:
    """One C{[db:NAME]}: how to reach it, run its schema, pool its connections, cancel a call."""

    log = Logger()

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.engine = config.engine
        self.password: str | None = None

    def sql(self, query: NamedQuery) -> str:
        """C{query}'s SQL in the driver's parameter style."""
        return engine.pg_sql(query.sql) if self.engine == "postgresql" else query.sql

    # -- start-up (blocking, before the reactor runs)

    def prepare(self, queries: Mapping[str, NamedQuery]) -> None:
        """Make sure the database can be used, run the schema, check the queries; raise L{DatabaseOpenError}."""
        if self.engine == "sqlite":
            self._prepare_sqlite(queries)
        else:
            self._prepare_postgresql(queries)

    def _prepare_sqlite(self, queries: Mapping[str, NamedQuery]) -> None:
        import sqlite3

        folder = os.path.dirname(self.config.path)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            conn = engine.sqlite_connect(self.config.path, self.config.query_timeout)
        except (OSError, sqlite3.Error) as e:
            raise DatabaseOpenError(f"cannot open {self.config.path}: {e}") from None
        try:
            if self.config.schema_text.strip():
                try:
                    conn.executescript(self.config.schema_text)
                    conn.commit()
                except sqlite3.Error as e:
                    raise DatabaseOpenError(f"the schema {self.config.schema} failed: {e}") from None
            for query in queries.values():
                if query.script:
                    continue
                try:
                    conn.execute("EXPLAIN " + query.sql, dict.fromkeys(query.params))
                except sqlite3.Error as e:
                    self.log.warn(
                        "query {query} ({file}:{line}) does not compile against the database: {error}",
                        query=query.name, file=self.config.queries, line=query.line, error=e,
                    )
        finally:
            conn.close()

    def _prepare_postgresql(self, queries: Mapping[str, NamedQuery]) -> None:
        psycopg = _psycopg()

        if self.config.password_file:
            try:
                with open(self.config.password_file, encoding="utf-8") as f:
                    self.password = f.readline().rstrip("\r\n")
            except OSError as e:
                raise DatabaseOpenError(f"cannot read password_file {self.config.password_file}: {e.strerror}") from None
        try:
            conn = psycopg.connect(self.config.url, **self._pg_kwargs())
        except psycopg.Error as e:
            raise DatabaseOpenError(f"cannot connect to {self.config.url}: {engine._first_line(e)}") from None
        try:
            if self.config.schema_text.strip():
                try:
                    conn.execute(self.config.schema_text)  # type: ignore[arg-type]
                    conn.commit()
                except psycopg.Error as e:
                    raise DatabaseOpenError(f"the schema {self.config.schema} failed: {engine._first_line(e)}") from None
            for query in queries.values():
                if query.script:
                    continue
                try:
                    conn.execute(f"PREPARE okws_check AS {engine.pg_numbered(query.sql, query.params)}")  # type: ignore[arg-type]
                    conn.execute("DEALLOCATE okws_check")
                except psycopg.Error as e:
                    conn.rollback()
                    if e.sqlstate == "42P18":
                        continue  # a parameter whose type only its value gives (SELECT :x): fine at run time
                    self.log.warn(
                        "query {query} ({file}:{line}) does not compile against the database: {error}",
                        query=query.name, file=self.config.queries, line=query.line, error=engine._first_line(e),
                    )
            conn.rollback()
        finally:
            conn.close()

    def _pg_kwargs(self) -> dict[str, Any]:
        kwargs = engine.pg_connect_kwargs(self.config.query_timeout)
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    # -- serving

    def connect(self) -> Any:
        """A new connection, set up for the proxy (called in a pool thread, on first use and after
        a dead connection was dropped)."""
        if self.engine == "sqlite":
            return engine.sqlite_connect(self.config.path, self.config.query_timeout)
        return _psycopg().connect(self.config.url, **self._pg_kwargs())

    def open_pool(self, reactor: Any) -> Workers:
        """The pool: C{pool} connections, each opened when a call first needs it, for C{pool + 1}
        threads (L{engine.execute} replaces a dead one before anything was committed)."""
        if self.engine == "sqlite":
            engine.register_sqlite_types()
        return Workers(reactor, self.config.pool, self.connect, name=f"db.{self.config.name}")

    def cancel(self, reactor: Any, running: engine.Running, key: object) -> None:
        """Stop call C{key} in the database: SQLite's interrupt is instant; PostgreSQL's cancel
        is a round trip to the server, made from a thread."""
        if self.engine == "sqlite":
            running.cancel(key)
        else:
            reactor.callInThread(running.cancel, key)
