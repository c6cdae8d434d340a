"""Tests for L{okws_twisted.config.databases}: [db:NAME] sections and the services' db keys.

Each mistake stops the start-up with one exact line naming the file, the section and the key.
The queries and schema files are real files in a temporary site directory.
"""

from __future__ import annotations

import os
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ConfigError, SiteConfig, load
from okws_twisted.config.databases import DatabaseConfig

QUERIES = """\
-- name: add_message(text)!
INSERT INTO messages (text) VALUES (:text);

-- name: recent_messages(limit)
SELECT id, text FROM messages ORDER BY id DESC LIMIT :limit;

-- name: create_all#
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, text TEXT);
"""

SERVICE = """
[service:guestbook]
resource = services.form:Form
paths = /guestbook
db = main
queries = add_message recent_messages
"""

DB = """
[db:main]
url = sqlite:///data/site.db
queries = sql/q.sql
"""


class DatabaseSectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="okws-cfg-")
        os.mkdir(os.path.join(self.dir, "sql"))
        self.write("sql/q.sql", QUERIES)
        self.write("sql/schema.sql", "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, text TEXT);\n")
        self.write("secrets/db.password", "s3cret\n")

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def load(self, db: str = DB, service: str = SERVICE) -> SiteConfig:
        ini = self.write("site.ini", "[okws]\n" + textwrap.dedent(db) + textwrap.dedent(service))
        return load(ini)

    def assertError(self, expected: str, db: str = DB, service: str = SERVICE) -> None:
        e = self.assertRaises(ConfigError, self.load, db, service)
        self.assertEqual(str(e).replace(self.dir + "/", ""), expected)
        self.assertNotIn("\n", str(e))

    # -- what a good section gives

    def test_defaults(self) -> None:
        config = self.load()
        [db] = config.databases
        self.assertEqual(db.name, "main")
        self.assertEqual(db.engine, "sqlite")
        self.assertEqual(db.path, os.path.join(self.dir, "data", "site.db"))
        self.assertEqual(db.queries, os.path.join(self.dir, "sql", "q.sql"))
        self.assertEqual((db.schema, db.schema_text, db.password_file), ("", "", ""))
        self.assertEqual(db.queries_text, QUERIES)
        self.assertEqual((db.pool, db.query_timeout, db.queue_max), (4, 10.0, 200))
        self.assertEqual((db.max_call_bytes, db.max_result_bytes), (1024 * 1024, 8 * 1024 * 1024))
        [service] = config.services
        self.assertEqual((service.db, service.queries), ("main", ("add_message", "recent_messages")))

    def test_every_key(self) -> None:
        config = self.load(DB + "schema = sql/schema.sql\npool = 2\nquery_timeout = 0.5\nqueue_max = 7\n"
                           "max_call_bytes = 4096\nmax_result_bytes = 70_000\nuid = 61000\ngid = 61001\n")
        db = config.databases[0]
        self.assertEqual((db.pool, db.query_timeout, db.queue_max, db.max_call_bytes, db.max_result_bytes, db.uid, db.gid),
                         (2, 0.5, 7, 4096, 70000, 61000, 61001))
        self.assertIn("CREATE TABLE", db.schema_text)

    def test_absolute_sqlite_path(self) -> None:
        db = self.load("[db:main]\nurl = sqlite:////var/lib/site/x.db\nqueries = sql/q.sql\n").databases[0]
        self.assertEqual(db.path, "/var/lib/site/x.db")

    def test_postgresql(self) -> None:
        db = self.load("[db:main]\nurl = postgresql://okws@127.0.0.1:5432/site\npassword_file = secrets/db.password\n"
                       "queries = sql/q.sql\n").databases[0]
        self.assertEqual((db.engine, db.path, db.socket_dir), ("postgresql", "", ""))
        self.assertEqual(db.password_file, os.path.join(self.dir, "secrets", "db.password"))
        db = self.load("[db:main]\nurl = postgresql:///site?host=/run/postgresql\nqueries = sql/q.sql\n").databases[0]
        self.assertEqual(db.socket_dir, "/run/postgresql")

    def test_no_sql_reaches_other_processes(self) -> None:
        """Only the proxy of a database is sent its SQL; everyone else gets the config without it."""
        config = self.load(DB + "schema = sql/schema.sql\n")
        for text in (config.to_json(), config.to_json(sql_for="other")):
            self.assertNotIn("INSERT", text)
            self.assertNotIn("CREATE", text)
            again = SiteConfig.from_json(text)
            self.assertEqual(again.databases[0].queries_text, "")
            self.assertEqual(again.services, config.services)
        self.assertEqual(SiteConfig.from_json(config.to_json(sql_for="main")), config)

    # -- mistakes, each one line

    def test_unknown_db(self) -> None:
        self.assertError("site.ini: [service:guestbook] db: no [db:other] section; the databases are main",
                         service=SERVICE.replace("db = main", "db = other"))

    def test_granted_query_not_in_file(self) -> None:
        self.assertError("site.ini: [service:guestbook] queries: recent_mesages is not a query of sql/q.sql "
                         "([db:main] queries); did you mean recent_messages?",
                         service=SERVICE.replace("recent_messages", "recent_mesages"))

    def test_script_is_never_granted(self) -> None:
        self.assertError("site.ini: [service:guestbook] queries: create_all is a script (#): scripts are never granted",
                         service=SERVICE.replace("add_message", "create_all"))

    def test_queries_without_db_and_db_without_queries(self) -> None:
        self.assertError("site.ini: [service:guestbook] db: missing; queries are granted on a database: add db = NAME",
                         service=SERVICE.replace("db = main\n", ""))
        self.assertError("site.ini: [service:guestbook] queries: missing; a service with db = main lists the queries "
                         "it may run", service=SERVICE.replace("queries = add_message recent_messages\n", ""))

    def test_password_in_url(self) -> None:
        expected = ("site.ini: [db:main] url: a password in the url is refused: put it in password_file, "
                    "which only the proxy reads")
        self.assertError(expected, db="[db:main]\nurl = postgresql://okws:pw@localhost/site\nqueries = sql/q.sql\n")
        self.assertError(expected, db="[db:main]\nurl = postgresql://okws@localhost/site?password=pw\nqueries = sql/q.sql\n")

    def test_missing_queries_file(self) -> None:
        self.assertError("site.ini: [db:main] queries: cannot read the queries file sql/nope.sql: No such file or directory",
                         db=DB.replace("sql/q.sql", "sql/nope.sql"))

    def test_queries_file_aiosql_refuses(self) -> None:
        """aiosql's own message, with the file and the line, even where aiosql gives none."""
        self.write("sql/q.sql", "-- name: ok()\nSELECT 1;\n\n-- name: add_note(a)!\nINSERT INTO t VALUES (:a, :b);\n")
        self.assertError("site.ini: [db:main] queries: undeclared parameter name in query add_note: b at sql/q.sql:4")
        self.write("sql/q.sql", "-- name: add_note!\nINSERT INTO t VALUES (:a);\n")
        e = self.assertRaises(ConfigError, self.load, DB, "")
        self.assertIn("site.ini: [db:main] queries: missing mandatory parameter list at sql/q.sql:1", str(e))
        self.write("sql/q.sql", "SELECT 1;\n")
        self.assertError("site.ini: [db:main] queries: no queries in sql/q.sql (each starts with a line like "
                         "'-- name: recent_messages(limit)')", service="")

    def test_bad_urls(self) -> None:
        for url, message in (
            ("mysql://x/y", "'mysql://x/y': unknown scheme 'mysql'; expected sqlite: or postgresql:"),
            ("sqlite://host/x.db", "'sqlite://host/x.db': a sqlite url has no host; write sqlite:///relative/path or "
             "sqlite:////absolute/path"),
            ("sqlite:///:memory:", "'sqlite:///:memory:': an in-memory database cannot be shared by a proxy; name a file"),
            ("sqlite:///", "'sqlite:///' names no database file"),
            ("postgresql://okws@localhost", "'postgresql://okws@localhost' names no database (postgresql://user@host/DBNAME)"),
            ("postgresql://okws@localhost:99999/x", "'postgresql://okws@localhost:99999/x': Port out of range 0-65535"),
        ):
            self.assertError(f"site.ini: [db:main] url: {message}", db=f"[db:main]\nurl = {url}\nqueries = sql/q.sql\n",
                             service="")

    def test_sqlite_directory_of_its_own(self) -> None:
        """The launcher gives the file's directory to the proxy's uid: it may not be the site's."""
        e = self.assertRaises(ConfigError, self.load, "[db:main]\nurl = sqlite:///site.db\nqueries = sql/q.sql\n")
        self.assertIn("site.ini: [db:main] url: the database's directory", str(e))
        self.assertIn("use a directory of its own, e.g. sqlite:///data/site.db", str(e))

    def test_password_file(self) -> None:
        self.assertError("site.ini: [db:main] password_file: is for postgresql urls only (SQLite has no password)",
                         db=DB + "password_file = secrets/db.password\n")
        pg = "[db:main]\nurl = postgresql://okws@localhost/site\nqueries = sql/q.sql\npassword_file = secrets/none\n"
        self.assertError("site.ini: [db:main] password_file: cannot read secrets/none: No such file or directory", db=pg)

    def test_numbers(self) -> None:
        self.assertError("site.ini: [db:main] pool: expected a whole number of connections from 1 to 64, got '0'",
                         db=DB + "pool = 0\n")
        self.assertError("site.ini: [db:main] query_timeout: expected a number of seconds from 0 to 3600, got '0'",
                         db=DB + "query_timeout = 0\n")
        self.assertError("site.ini: [db:main] queue_max: expected a whole number of calls from 1 to 100000, got 'lots'",
                         db=DB + "queue_max = lots\n")

    def test_unknown_key_and_section(self) -> None:
        self.assertError("site.ini: [db:main] pools: unknown key; did you mean pool?", db=DB + "pools = 3\n")
        e = self.assertRaises(ConfigError, self.load, "[database:main]\nurl = sqlite:///d/x.db\n", "")
        self.assertIn("[database:main] unknown section; did you mean [db:main]?", str(e))

    def test_bad_names(self) -> None:
        self.assertError("site.ini: [db:Main] database name 'Main' must match [a-z][a-z0-9_-]{0,31}",
                         db=DB.replace("db:main", "db:Main"), service="")
        with self.assertRaises(ValueError):
            DatabaseConfig(name="x", url="sqlite:///d/x.db", queries="/q.sql", path="relative.db")
