"""
Services for the database proxy's end-to-end tests, and the files of their database.

L{Calls} takes one JSON command per POST and answers JSON: a call of any
granted query with JSON parameters (C{call}), every carried value type
stored and read back (C{roundtrip}), many calls at once (C{burst}).  Errors
come back as their class name and message, so a test sees what the author
sees.  L{write_database_files} writes the queries and schema the site's
C{[db:main]} section names, for SQLite or PostgreSQL (the same queries file
for both).
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import time

from twisted.internet import defer, reactor, task

from okws_twisted import DatabaseError, ServiceResource

QUERIES = """\
-- name: add_value(b, i, f, s, y, d, dt, ts, tz)<!
INSERT INTO vals (b, i, f, s, y, d, dt, ts, tz) VALUES (:b, :i, :f, :s, :y, :d, :dt, :ts, :tz) RETURNING id;

-- name: get_value(id)^
SELECT b, i, f, s, y, d, dt, ts, tz FROM vals WHERE id = :id;

-- name: add_name(name)!
INSERT INTO names (name) VALUES (:name);

-- name: add_name_returning(name)<!
INSERT INTO names (name) VALUES (:name) RETURNING id, name;

-- name: add_names*!
INSERT INTO names (name) VALUES (:name);

-- name: get_name(id)^
SELECT id, name FROM names WHERE id = :id;

-- name: names_like(pattern)
SELECT name FROM names WHERE name LIKE :pattern ORDER BY name;

-- name: all_names()
SELECT id, name FROM names ORDER BY id;

-- name: count_names()$
SELECT count(*) FROM names;

-- name: rename(id, name)!
UPDATE names SET name = :name WHERE id = :id;

-- name: add_token(token, service)!
INSERT INTO tokens (token, service) VALUES (:token, :service);

-- name: add_token_padded(token, service, pad)<!
INSERT INTO tokens (token, service) VALUES (:token, :service) RETURNING id, zeroblob(:pad) AS padding;

-- name: count_tokens()$
SELECT count(*) FROM tokens;

-- name: percent()$
SELECT count(*) FROM names WHERE name LIKE '%x%';
"""

SQLITE_SLOW = """
-- name: slow(n)$
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n) SELECT count(*) FROM c;
"""

POSTGRESQL_SLOW = """
-- name: slow(n)$
SELECT count(*) FROM (SELECT pg_sleep(:n)) AS s;
"""

SQLITE_SCHEMA = """\
CREATE TABLE IF NOT EXISTS vals (id INTEGER PRIMARY KEY, b BOOLEAN, i INTEGER, f REAL, s TEXT, y BLOB,
                                 d DECIMAL TEXT, dt DATE, ts TIMESTAMP, tz TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (id INTEGER PRIMARY KEY, token TEXT NOT NULL, service TEXT NOT NULL);
"""

POSTGRESQL_SCHEMA = """\
CREATE TABLE IF NOT EXISTS vals (id SERIAL PRIMARY KEY, b BOOLEAN, i BIGINT, f DOUBLE PRECISION, s TEXT, y BYTEA,
                                 d NUMERIC, dt DATE, ts TIMESTAMP, tz TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS names (id SERIAL PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (id SERIAL PRIMARY KEY, token TEXT NOT NULL, service TEXT NOT NULL);
"""

#: One row of every carried type, and the edge cases of each.
VALUES = [
    dict(b=True, i=2**62, f=0.1, s="caf\u00e9 \U0001f600 '; DROP TABLE vals;--", y=b"\x00\xff" * 8,
         d=decimal.Decimal("12345678901234567890.10"), dt=datetime.date(2024, 2, 29),
         ts=datetime.datetime(2024, 5, 1, 12, 0, 0, 1),
         tz=datetime.datetime(2024, 7, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))),
    dict(b=False, i=-(2**63), f=-1.5e-300, s="", y=b"", d=decimal.Decimal("-12.340"), dt=datetime.date(1, 1, 1),
         ts=datetime.datetime(9999, 12, 31, 23, 59, 59, 999999),
         tz=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))),
    dict(b=None, i=None, f=None, s=None, y=None, d=None, dt=None, ts=None, tz=None),
]


def write_database_files(directory: str, engine: str) -> None:
    """The queries and schema of the tests' [db:main], in C{directory}/sql."""
    os.makedirs(os.path.join(directory, "sql"), exist_ok=True)
    slow = SQLITE_SLOW if engine == "sqlite" else POSTGRESQL_SLOW
    schema = SQLITE_SCHEMA if engine == "sqlite" else POSTGRESQL_SCHEMA
    for name, text in (("queries.sql", QUERIES + slow), ("schema.sql", schema)):
        with open(os.path.join(directory, "sql", name), "w") as f:
            f.write(text)


def same(sent: object, got: object, engine: str) -> bool:
    """Equal, same type, and the same text where equality hides a difference.

    PostgreSQL keeps an aware datetime's instant, not its offset (it answers in
    the session's time zone): there, the same instant is the same value.
    """
    if type(sent) is not type(got):
        return False
    if isinstance(sent, decimal.Decimal):
        return str(sent) == str(got)
    if isinstance(sent, float):
        return repr(sent) == repr(got)
    if isinstance(sent, datetime.datetime) and sent.tzinfo is not None:
        if got.tzinfo is None:  # type: ignore[union-attr]
            return False
        return sent == got and (engine == "postgresql" or sent.utcoffset() == got.utcoffset())  # type: ignore[union-attr]
    return sent == got


class Calls(ServiceResource):
    """POST a JSON command, get JSON back."""

    # A JSON test API driven by the tests, not a browser form: no CSRF token.
    csrf_methods = frozenset()

    isLeaf = True

    async def render_POST(self, request):
        command = json.loads(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-okws-pid", str(os.getpid()).encode())
        op = command["op"]
        if op == "call":
            answer = await self.call(command["query"], command.get("params"), command.get("many"))
        elif op == "roundtrip":
            answer = await self.roundtrip(command["engine"])
        elif op == "burst":
            answer = await self.burst(command)
        else:
            answer = {"error": "unknown op"}
        return json.dumps(answer).encode()

    async def call(self, query, params, many):
        method = getattr(self.db, query)
        try:
            result = await (method(many) if many is not None else method(**(params or {})))
        except DatabaseError as e:
            return {"error": type(e).__name__, "message": e.message, "query": e.query, "db": e.db}
        except TypeError as e:
            return {"error": "TypeError", "message": str(e)}
        return {"result": repr(result), "type": type(result).__name__}

    async def roundtrip(self, engine):
        wrong = []
        for row in VALUES:
            new_id = await self.db.add_value(**row)
            back = await self.db.get_value(id=new_id)
            for key, sent in row.items():
                if not same(sent, back[key], engine):
                    wrong.append(f"{key}: sent {sent!r}, got {back[key]!r}")
        try:
            self.db.add_value(**dict(VALUES[0], d=1 + 2j))
        except TypeError as e:
            refused = str(e)
        else:
            refused = "not refused"
        return {"wrong": wrong, "rows": len(VALUES), "refused": refused}

    async def burst(self, command):
        """C{n} calls of C{query} (C{add_token} with numbered tokens, or a read), at most
        C{window} at a time (all at once by default), one started every C{pace} seconds."""
        query, n = command["query"], command["n"]
        prefix = command.get("prefix", "t")
        service = command.get("service", "")
        started = time.monotonic()

        window = defer.DeferredSemaphore(command.get("window") or n)

        def one(i):
            if query == "add_token":
                return self.db.add_token(token=f"{prefix}-{i}", service=service)
            if query == "add_token_padded":
                return self.db.add_token_padded(token=f"{prefix}-{i}", service=service, pad=command["pad"])
            return getattr(self.db, query)(**command.get("params", {}))

        pace = command.get("pace", 0)
        calls = []
        for i in range(n):
            calls.append(window.run(one, i))
            if pace:
                await task.deferLater(reactor, pace, lambda: None)
        results = await defer.DeferredList(calls, consumeErrors=True)
        acked, failed = [], {}
        for i, (ok, value) in enumerate(results):
            if ok:
                acked.append(f"{prefix}-{i}")
            else:
                name = type(value.value).__name__
                failed[name] = failed.get(name, 0) + 1
                failed.setdefault("messages", set()).add(str(value.value)[:200])
        if "messages" in failed:
            failed["messages"] = sorted(failed["messages"])[:5]
        return {"acked": acked, "failed": failed, "seconds": time.monotonic() - started}
