# -*- test-case-name: tests.dbproxy.test_engine -*-
"""
Running one named query on one connection, in a pool thread (the proxy's side of OKWS's ezdb).

The database proxy runs each call in one of its pool's threads
(L{okws_twisted.dbproxy.workers}): one thread, one connection of its own, one
transaction.  L{execute} is what runs in that thread: it runs a
L{NamedQuery}'s SQL with the caller's parameters, commits (or rolls back), and
shapes the result by the query's suffix, the same way on both engines, as the
encoded JSON of wire values (L{okws_twisted.wire.dbvalues}), so nothing
engine-specific reaches a service::

    ""    every row: {"c": [columns], "r": [[values]]}
    "^"   the first row the same way, or null
    "$"   the first column of the first row, or null
    "!"   the number of rows affected
    "*!"  the total number of rows affected over every parameter set
    "<!"  RETURNING one column: that value (the new id); several: the first
          row ({"c", "r"}); no RETURNING: SQLite's last row id, PostgreSQL's null

It answers C{(status, value)}, never raises: C{status} is one of the wire's
(L{okws_twisted.wire.dbchannel}); for C{ok} the value is the encoded result,
else a message for the caller.

Cancelling: L{Running} registers the raw connection of each call while it
runs, so the reactor thread can stop it in the database at its deadline
(SQLite's C{interrupt()}, PostgreSQL's cancel request), never the next call
on the same connection.  Also used, on a plain sqlite3 connection, by
L{okws_twisted.testing}'s in-memory database: authors' tests run this code.
"""

from __future__ import annotations

import datetime
import decimal
import re
import sqlite3
import threading
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

from okws_twisted.sqlqueries import NamedQuery
from okws_twisted.wire import dbvalues
from okws_twisted.wire.dbchannel import FAILED, OK, UNAVAILABLE

# -- SQLite: what goes in and what comes out
#
# sqlite3 has no types for these; registered once per process (sqlite3's
# registries are global).  Results convert by the column's declared type
# (detect_types=PARSE_DECLTYPES): only plain column references keep it, so
# `SELECT max(created)` comes back as the stored text.  Declare decimal
# columns with a TEXT affinity (`price DECIMAL TEXT`): a `DECIMAL` column has
# NUMERIC affinity and SQLite stores '1.10' as the REAL 1.1.

_SQLITE_CONVERTERS: dict[str, Callable[[bytes], object]] = {
    "BOOLEAN": lambda b: bool(int(b)),
    "BOOL": lambda b: bool(int(b)),
    "DATE": lambda b: datetime.date.fromisoformat(b.decode()),
    "DATETIME": lambda b: datetime.datetime.fromisoformat(b.decode()),
    "TIMESTAMP": lambda b: datetime.datetime.fromisoformat(b.decode()),
    "TIMESTAMPTZ": lambda b: datetime.datetime.fromisoformat(b.decode()),
    "DECIMAL": lambda b: decimal.Decimal(b.decode()),
}
_registered = False


def register_sqlite_types() -> None:
    """Teach sqlite3 the carried types (idempotent; global to the process)."""
    global _registered
    if _registered:
        return
    sqlite3.register_adapter(decimal.Decimal, str)
    sqlite3.register_adapter(datetime.date, lambda d: d.isoformat())
    sqlite3.register_adapter(datetime.datetime, lambda d: d.isoformat(" "))
    for name, convert in _SQLITE_CONVERTERS.items():
        sqlite3.register_converter(name, convert)
    _registered = True


def sqlite_connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """One connection to the SQLite file C{path}, set up as the proxy's pool sets up each."""
    register_sqlite_types()
    conn = sqlite3.connect(path, **sqlite_connect_kwargs(busy_timeout))
    sqlite_open(conn)
    return conn


def sqlite_connect_kwargs(busy_timeout: float) -> dict[str, Any]:
    """sqlite3.connect's arguments: any thread may interrupt; declared types convert."""
    return {"check_same_thread": False, "detect_types": sqlite3.PARSE_DECLTYPES, "timeout": busy_timeout}


def sqlite_open(conn: sqlite3.Connection) -> None:
    """Each connection: WAL (readers never wait for the writer; a crash loses no committed
    transaction), C{synchronous=NORMAL} (durable across a killed process; the last
    transactions may be lost on power loss), foreign keys enforced."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal" and conn.execute("PRAGMA database_list").fetchone()[2] != "":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.commit()


# -- PostgreSQL: named parameters become psycopg's %(name)s, and a literal % is doubled.

_PG_TOKENS = re.compile(
    r"(?P<comment>--[^\n]*|/\*.*?\*/)|(?P<dquote>\"(?:\"\"|[^\"])*\")|(?P<squote>'(?:''|[^'])*')"
    r"|(?P<cast>::)|:(?P<name>[A-Za-z_]\w*)|(?P<pct>%)",
    re.DOTALL,
)


def pg_sql(sql: str) -> str:
    """C{:name} -> C{%(name)s}; C{%} -> C{%%} everywhere else (psycopg reads % in the whole text).

    Quoted strings, quoted identifiers, comments and C{::} casts are left alone
    (but for their C{%}).
    """

    def sub(m: re.Match[str]) -> str:
        if m.group("cast") or m.group("dquote"):
            return m.group(0).replace("%", "%%")
        if m.group("squote") or m.group("comment"):
            return m.group(0).replace("%", "%%")
        if m.group("name"):
            return f"%({m.group('name')})s"
        return "%%"

    return _PG_TOKENS.sub(sub, sql)


def pg_connect_kwargs(query_timeout: float) -> dict[str, Any]:
    """Session settings sent with each connection (no extra round trip per call): the
    server itself cancels a statement over C{query_timeout}, and a connection that
    stays idle inside a transaction."""
    ms = max(1, int(query_timeout * 1000))
    return {
        "options": f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms * 2}",
        "autocommit": False,
        "connect_timeout": max(1, int(query_timeout)),
    }


# -- cancelling


class Running:
    """The raw connections of the calls running now, so another thread may cancel one.

    The lock makes "cancel call K" and "call K finished, its connection moves
    on" exclusive, so a late cancel never hits the next call on that
    connection; a call cancelled after it was handed to the pool but before it
    started never starts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handed: set[object] = set()
        self._running: dict[object, Any] = {}
        self._cancelled: set[object] = set()

    def handed(self, key: object) -> None:
        """Call C{key} was handed to the pool: it will reach L{start}."""
        with self._lock:
            self._handed.add(key)

    def start(self, key: object, raw: Any) -> bool:
        """Call C{key} starts on C{raw}; C{False} if it was cancelled already (do not run it)."""
        with self._lock:
            self._handed.discard(key)
            if key in self._cancelled:
                self._cancelled.discard(key)
                return False
            self._running[key] = raw
            return True

    def finish(self, key: object) -> bool:
        """Call C{key} is over (or never got a connection); C{True} if it was cancelled while it ran."""
        with self._lock:
            self._handed.discard(key)
            self._running.pop(key, None)
            if key in self._cancelled:
                self._cancelled.discard(key)
                return True
            return False

    def cancelled(self, key: object) -> bool:
        """Whether call C{key} was cancelled (it is over: stop trying)."""
        with self._lock:
            return key in self._cancelled

    def cancel(self, key: object) -> None:
        """Stop call C{key} in the database if it runs now, or make sure it never starts.

        PostgreSQL's cancel is a network round trip: call this from a thread,
        not the reactor, for a psycopg connection.  A call that already
        finished is left alone.
        """
        with self._lock:
            if key in self._handed:
                self._cancelled.add(key)
                return
            raw = self._running.get(key)
            if raw is None:
                return
            self._cancelled.add(key)
            if isinstance(raw, sqlite3.Connection):
                raw.interrupt()
            else:
                try:
                    raw.cancel_safe(timeout=2.0)
                except Exception:
                    pass  # the server's statement_timeout still stops it

    def __len__(self) -> int:
        return len(self._running)


# -- running one call


class Connections(Protocol):
    """Where a pool thread gets its connection: C{connect()} gives this thread's connection,
    opening it if need be; C{disconnect()} drops a dead one (the proxy's pool threads, or
    L{OneConnection})."""

    def connect(self) -> Any: ...

    def disconnect(self, conn: Any) -> None: ...


class OneConnection:
    """L{Connections} of one connection that is always there (a test's in-memory database)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def connect(self) -> Any:
        return self.conn

    def disconnect(self, conn: Any) -> None:
        pass


#: The first pause before trying an unreachable database again; it doubles up to L{RETRY_MAX}.
RETRY_FIRST = 0.05
RETRY_MAX = 0.5


def execute(
    connections: Connections,
    query: NamedQuery,
    sql: str,
    params: Mapping[str, object] | Sequence[Mapping[str, object]],
    running: Running,
    key: object,
    max_result_bytes: int,
    timeout: float,
    time_left: float = 0.0,
) -> tuple[str, object]:
    """Run C{query} (its engine's C{sql}) as one transaction; answer C{(status, value)}.

    Runs in a pool thread, on that thread's connection.  If the database
    cannot be reached, or the statement finds its connection dead (the server
    restarted), it tries again on a fresh connection, pausing a little more
    each time, for up to C{time_left} seconds (what is left of the call's
    C{query_timeout}): nothing was committed, and an uncommitted PostgreSQL
    transaction dies with its connection.  A failure of the commit itself is
    never retried: its outcome is unknown.
    """
    deadline = time.monotonic() + time_left
    pause = RETRY_FIRST
    while True:
        try:
            raw = connections.connect()
        except Exception as e:
            problem = f"the database is unreachable: {_first_line(e)}"
        else:
            if not running.start(key, raw):
                return UNAVAILABLE, f"no connection was free within query_timeout ({timeout:g}s); it did not run"
            try:
                result = _run(raw, query, sql, params)
            except Exception as e:
                cancelled = running.finish(key)
                _rollback(raw)
                if cancelled or _timed_out(e):
                    return UNAVAILABLE, f"cancelled in the database after query_timeout ({timeout:g}s)"
                if isinstance(e, dbvalues.ValueRefused):
                    return FAILED, f"the result holds a value the database channel does not carry ({e}); cast it in the SQL"
                if not _dead(raw):
                    return _classify(e)
                connections.disconnect(raw)
                running.handed(key)  # waiting again: a cancel now means "do not start it"
                problem = f"the database is unreachable: {_first_line(e)}"
            else:
                running.finish(key)
                return _commit(raw, connections, result, max_result_bytes)
        if time.monotonic() + pause > deadline or running.cancelled(key):
            running.finish(key)
            return UNAVAILABLE, problem
        time.sleep(pause)
        pause = min(RETRY_MAX, pause * 2)


def _commit(raw: Any, connections: Connections, result: object, max_result_bytes: int) -> tuple[str, object]:
    try:
        raw.commit()
    except Exception as e:
        _rollback(raw)
        if _dead(raw):
            connections.disconnect(raw)
        return UNAVAILABLE, f"the commit failed, so the call may or may not have taken effect: {_first_line(e)}"
    encoded = dbvalues.dumps(result)  # every value is in wire form already
    if len(encoded) > max_result_bytes:
        return FAILED, f"result too large ({len(encoded)} bytes; max_result_bytes is {max_result_bytes})"
    return OK, encoded


def _run(raw: Any, query: NamedQuery, sql: str, params: Any) -> object:
    cur = raw.cursor()
    try:
        if query.many:
            cur.executemany(sql, list(params))
            return _rowcount(cur)
        cur.execute(sql, params)
        suffix = query.suffix
        if suffix == "!":
            return _rowcount(cur)
        if suffix == "<!":
            if cur.description is None:
                return cur.lastrowid if isinstance(raw, sqlite3.Connection) else None
            row = cur.fetchone()
            while cur.fetchone() is not None:  # sqlite3 finishes the statement only when drained
                pass
            if row is None:
                return None
            if len(cur.description) == 1:  # RETURNING id: the id itself
                return dbvalues.to_wire(row[0])
            return dbvalues.encode_rows(_columns(cur), [row])
        if suffix == "$":
            row = cur.fetchone()
            return None if row is None else dbvalues.to_wire(row[0])
        if suffix == "^":
            row = cur.fetchone()
            return None if row is None else dbvalues.encode_rows(_columns(cur), [row])
        return dbvalues.encode_rows(_columns(cur), cur.fetchall())
    finally:
        try:
            cur.close()
        except Exception:
            pass


def _columns(cur: Any) -> list[str]:
    return [d[0] for d in cur.description]


def _rowcount(cur: Any) -> int:
    return max(cur.rowcount, 0)


def _rollback(raw: Any) -> None:
    try:
        raw.rollback()
    except Exception:
        pass  # a dead connection: its transaction died with it


def _dead(raw: Any) -> bool:
    return bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))


def _timed_out(e: Exception) -> bool:
    """The database stopped the statement for time (PostgreSQL's statement_timeout, SQLite's interrupt)."""
    if getattr(e, "sqlstate", None) == "57014":  # query_canceled
        return True
    return isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _classify(e: Exception) -> tuple[str, str]:
    """A statement's failure as the caller sees it.

    The database unreachable, locked or shutting down: C{unavailable} (try again
    later).  Anything the statement itself did wrong (a constraint, a syntax
    error, a value the column refuses): C{failed}, with the database's message.
    """
    if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
        return UNAVAILABLE, f"the database is busy: {_first_line(e)}"
    sqlstate = getattr(e, "sqlstate", None)
    module = type(e).__module__
    if module.startswith("psycopg") and (
        type(e).__name__ in ("OperationalError", "InterfaceError")
        or (isinstance(sqlstate, str) and sqlstate[:2] in ("08", "53", "57"))
    ):
        return UNAVAILABLE, f"the database is unreachable: {_first_line(e)}"
    if isinstance(e, (sqlite3.Error, OverflowError, dbvalues.ValueRefused)) or module.startswith("psycopg"):
        return FAILED, _first_line(e)
    return FAILED, f"{type(e).__name__}: {_first_line(e)}"
