"""Tests for L{okws_twisted.sqlqueries}: the queries file read with aiosql, every mistake located."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.sqlqueries import NamedQuery, QueriesError, load, parse

GOOD = """\
-- name: recent(limit)
-- The latest, newest first.
SELECT id, text FROM msg ORDER BY id DESC LIMIT :limit;

-- name: get-one(id)^
SELECT ':notaparam' AS s, id FROM msg WHERE id = :id;

-- name: count_all()$
SELECT count(*) FROM msg;

-- name: add(text)!
INSERT INTO msg (text) VALUES (:text);

-- name: add_returning<!
INSERT INTO msg (text) VALUES (:text) RETURNING id;

-- name: add_many*!
INSERT INTO msg (text, n) VALUES (:text, :n);

-- name: create#
CREATE TABLE IF NOT EXISTS msg (id INTEGER PRIMARY KEY, text TEXT, n INTEGER);
"""


class ParseTests(SynchronousTestCase):
    def test_every_suffix_and_its_parameters(self) -> None:
        queries = parse(GOOD, "q.sql")
        shapes = {name: (q.suffix, q.params, q.line) for name, q in queries.items()}
        self.assertEqual(shapes, {
            "recent": ("", ("limit",), 1),
            "get_one": ("^", ("id",), 5),  # dashes become underscores
            "count_all": ("$", (), 8),
            "add": ("!", ("text",), 11),
            "add_returning": ("<!", ("text",), 14),
            "add_many": ("*!", ("text", "n"), 17),
            "create": ("#", (), 20),
        })
        self.assertNotIn("recent_cursor", queries)
        self.assertTrue(queries["add_many"].many and queries["create"].script)
        self.assertEqual(queries["recent"].sql, "SELECT id, text FROM msg ORDER BY id DESC LIMIT :limit;")
        self.assertIsInstance(queries["add"], NamedQuery)

    def test_every_mistake_names_file_and_line(self) -> None:
        for text, expected in (
            ("-- name: add_note!\nINSERT INTO t VALUES (:a);\n", "missing mandatory parameter list at sql/q.sql:1"),
            ("-- name: ok()\nSELECT 1;\n\n-- name: add_note(a)!\nINSERT INTO t VALUES (:a, :b);\n",
             "undeclared parameter name in query add_note: b at sql/q.sql:4"),
            ("\n\n-- name: add_note(a, b)!\nINSERT INTO t VALUES (:a);\n",
             "unused declared parameter in query add_note: ['b'] at sql/q.sql:3"),
            ("-- name: q()\nSELECT 1;\n-- name: q()\nSELECT 2;\n", "cannot override existing attribute with query: q at sql/q.sql:3"),
            ("-- name: 1bad()\nSELECT 1;\n", "invalid query name and operation spec at sql/q.sql:1"),
            ("-- name: e()\n-- only a comment\n", "empty sql for: e at sql/q.sql:1"),
            ("-- name: available_queries()\nSELECT 1;\n", "available_queries at sql/q.sql:1"),
            ("SELECT 1;\n", "no queries in sql/q.sql"),
        ):
            with self.assertRaises(QueriesError, msg=text) as cm:
                parse(text, "sql/q.sql")
            self.assertIn(expected, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))


class LoadTests(SynchronousTestCase):
    def test_load(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "q.sql")
        with open(path, "w") as f:
            f.write(GOOD)
        text, queries = load(path)
        self.assertEqual(text, GOOD)
        self.assertEqual(len(queries), 7)

    def test_unreadable(self) -> None:
        with self.assertRaises(QueriesError) as cm:
            load("/nonexistent/q.sql")
        self.assertEqual(str(cm.exception), "cannot read the queries file /nonexistent/q.sql: No such file or directory")
        path = os.path.join(tempfile.mkdtemp(), "q.sql")
        with open(path, "wb") as f:
            f.write(b"-- name: q()\nSELECT '\xff';\n")
        with self.assertRaises(QueriesError):
            load(path)
