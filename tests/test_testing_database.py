"""
Tests for L{okws_twisted.testing.InMemoryDatabase}: what an author's test of C{self.db} runs on,
built from real files and run by the proxy's own code, with production's types and errors.
"""

from __future__ import annotations

import os
import tempfile

from typing import Any, Mapping

from twisted.internet.defer import Deferred, fail
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from okws_twisted import DatabaseError, DatabaseUnavailable, QueryFailed, QueryRefused, ServiceResource
from okws_twisted.interfaces import IDatabase
from okws_twisted.sqlqueries import QueriesError
from okws_twisted.testing import InMemoryDatabase, render
from tests.sites.database import QUERIES, SQLITE_SCHEMA, VALUES, same


class Notes(ServiceResource):
    isLeaf = True

    async def render_GET(self, request: object) -> str:
        rows = await self.db.all_names()
        return ", ".join(row["name"] for row in rows)

    async def render_POST(self, request: object) -> str:
        await self.db.add_name(name="from a request")
        return "ok"


class InMemoryDatabaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.queries = os.path.join(folder, "q.sql")
        self.schema = os.path.join(folder, "s.sql")
        with open(self.queries, "w") as f:
            f.write(QUERIES)
        with open(self.schema, "w") as f:
            f.write(SQLITE_SCHEMA)
        self.db = InMemoryDatabase(self.queries, self.schema)
        self.call = lambda query, *args, **kwargs: self.db.call(query, args, kwargs)

    def test_every_suffix_and_type(self) -> None:
        for row in VALUES:
            new_id = self.successResultOf(self.call("add_value", **row))
            back = self.successResultOf(self.call("get_value", id=new_id))
            for key, sent in row.items():
                self.assertTrue(same(sent, back[key], "sqlite"), f"{key}: {sent!r} came back {back[key]!r}")
        self.assertEqual(self.successResultOf(self.call("add_names", [{"name": "a"}, {"name": "b"}])), 2)
        self.assertEqual(self.successResultOf(self.call("count_names")), 2)
        self.assertEqual(self.successResultOf(self.call("all_names")), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
        self.assertIsNone(self.successResultOf(self.call("get_name", id=99)))

    def test_same_errors_as_production(self) -> None:
        self.successResultOf(self.call("add_name", name="x"))
        failure = self.failureResultOf(self.call("add_name", name="x"), QueryFailed)
        self.assertIn("UNIQUE constraint failed", failure.value.message)
        self.assertIsInstance(failure.value, DatabaseError)
        with self.assertRaises(TypeError):
            self.call("add_name", name=1 + 2j)
        with self.assertRaises(TypeError):
            self.call("add_name", nam="x")

    def test_grants(self) -> None:
        db = InMemoryDatabase(self.queries, self.schema, grants=["count_names"])
        self.assertEqual(self.successResultOf(db.call("count_names", (), {})), 0)
        self.failureResultOf(db.call("add_name", (), {"name": "x"}), QueryRefused)
        with self.assertRaises(ValueError):
            InMemoryDatabase(self.queries, self.schema, grants=["no_such_query"])

    def test_bad_queries_file(self) -> None:
        with open(self.queries, "w") as f:
            f.write("-- name: broken!\nSELECT 1;\n")
        with self.assertRaises(QueriesError):
            InMemoryDatabase(self.queries)

    def test_through_render(self) -> None:
        self.assertEqual(self.successResultOf(render(Notes(), "POST", db=self.db, csrf=True)).text(), "ok")
        self.assertEqual(self.successResultOf(render(Notes(), db=self.db)).text(), "from a request")
        self.assertEqual(self.db.connection.execute("SELECT count(*) FROM names").fetchone()[0], 1)


@implementer(IDatabase)
class FailingDatabase:
    """A database whose every call fails with C{error}: for the resource's handling of failures."""

    name = "main"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def call(self, query: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Deferred[Any]:
        return fail(self.error)


class UncaughtDatabaseErrorTests(SynchronousTestCase):
    """Uncaught in render_*: DatabaseUnavailable answers 503 with Retry-After, the others 500; each is logged
    with the query and the database."""

    def render(self, error: Exception) -> tuple[Any, list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        response = self.successResultOf(render(Notes(), db=FailingDatabase(error)))
        return response, [e for e in events if e.get("query")]

    def test_unavailable_is_503(self) -> None:
        response, logged = self.render(DatabaseUnavailable("queue full", "all_names", "main", retry_after=9))
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["9"])
        self.assertNotIn("queue full", response.text(), "the database's message never reaches the client")
        [event] = logged
        self.assertEqual((event["query"], event["db"], event["kind"]), ("all_names", "main", "DatabaseUnavailable"))
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.flushLoggedErrors(DatabaseUnavailable)

    def test_others_are_500(self) -> None:
        for error in (QueryFailed("UNIQUE constraint failed: names.name", "all_names", "main"),
                      QueryRefused("not granted", "all_names", "main")):
            response, logged = self.render(error)
            self.assertEqual(response.code, 500)
            self.assertIsNone(response.headers.getRawHeaders("retry-after"))
            self.assertNotIn("UNIQUE", response.text())
            self.assertEqual(logged[-1]["log_level"], LogLevel.error)
            self.assertIn("database call all_names on [db:main] failed", formatEvent(logged[-1]))
            self.assertEqual(len(self.flushLoggedErrors(type(error))), 1)
