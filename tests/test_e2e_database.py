"""
The database proxy end to end, on both engines: real ``twistd okws``, real HTTP, a real database.

Two services (A at /a, B at /b, both L{tests.sites.database.Calls}) share one
C{[db:main]} with a pool of 4.  SQLite is a file in the site's C{data/}
directory; PostgreSQL is a throwaway cluster started for the class
(L{tests.pgcluster}), reached over TCP with a password file, as a site on
several hosts would reach it.  Nothing is mocked: the answers are what the
services' C{self.db} calls gave, and the counts are read from the database.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import E2ETestCase, Site, read_response, request_bytes, wait_until
from tests.pgcluster import PostgresCluster
from tests.sites.database import write_database_files

GRANTS_A = ("add_value get_value add_name add_name_returning add_names get_name names_like all_names count_names "
            "rename add_token count_tokens percent slow")
GRANTS_B = "add_token count_tokens count_names get_name"

SERVICES = f"""
[service:a]
resource = tests.sites.database:Calls
paths = /a
db = main
queries = {GRANTS_A}

[service:b]
resource = tests.sites.database:Calls
paths = /b
db = main
queries = {GRANTS_B}

[service:hello]
resource = services.hello:Hello
paths = /hello
"""

OKWS = """
restart_delay_min = 0.2
"""


def post(site: Site, path: str, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """POST one JSON command to a test service; its JSON answer."""
    body = json.dumps(command).encode()
    with site.connect(timeout) as s:
        s.sendall(request_bytes("POST", path, {"Connection": "close", "Content-Type": "application/json"}, body))
        response = read_response(s)
    if response.status != 200:
        raise AssertionError(f"POST {path} {command.get('op')}: {response.status} {response.body[:500]!r}")
    return json.loads(response.body)


class DatabaseE2EMixin:
    """What both engines must do alike."""

    engine: str
    _site: Site | None = None

    @classmethod
    def db_section(cls, site_dir: str) -> str:
        raise NotImplementedError

    @classmethod
    def site(cls) -> Site:
        if cls._site is None:
            site = Site(SERVICES, OKWS)
            write_database_files(site.dir, cls.engine)
            with open(site.ini, "a") as f:
                f.write(cls.db_section(site.dir))
            atexit.register(site.close)
            cls._site = site
            site.start()
        return cls._site

    def call(self, query: str, path: str = "/a", many: list[Any] | None = None, **params: Any) -> dict[str, Any]:
        return post(self.site(), path, {"op": "call", "query": query, "params": params, "many": many})

    def test_every_suffix(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(self.call("add_name", name="suffix-one"), {"result": "1", "type": "int"})
        returned = self.call("add_name_returning", name="suffix-two")
        case.assertEqual(returned["type"], "dict")
        case.assertIn("'name': 'suffix-two'", returned["result"])
        new_id = int(returned["result"].split("'id': ")[1].split(",")[0])
        case.assertEqual(self.call("get_name", id=new_id)["result"], f"{{'id': {new_id}, 'name': 'suffix-two'}}")
        case.assertEqual(self.call("add_names", many=[{"name": "suffix-m1"}, {"name": "suffix-m2"}])["result"], "2")
        case.assertEqual(self.call("names_like", pattern="suffix-m%")["result"],
                         "[{'name': 'suffix-m1'}, {'name': 'suffix-m2'}]")
        count = self.call("count_names")
        case.assertEqual(count["type"], "int")
        case.assertGreaterEqual(int(count["result"]), 4)
        case.assertEqual(self.call("rename", id=new_id, name="suffix-renamed")["result"], "1")
        case.assertEqual(self.call("rename", id=10**9, name="nobody")["result"], "0")
        # A literal % in the SQL works on both engines (psycopg reads % everywhere).
        case.assertEqual(self.call("percent")["type"], "int")

    def test_every_type_round_trips(self) -> None:
        answer = post(self.site(), "/a", {"op": "roundtrip", "engine": self.engine})
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(answer["wrong"], [])
        case.assertEqual(answer["rows"], 3)
        case.assertIn("parameter 'd'", answer["refused"])
        case.assertIn("not complex", answer["refused"])

    def test_unique_violation_is_query_failed(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(self.call("add_name", name="only-once")["result"], "1")
        before = self.call("count_names")["result"]
        again = self.call("add_name", name="only-once")
        case.assertEqual(again["error"], "QueryFailed", again)
        case.assertRegex(again["message"].lower(), "unique")
        case.assertEqual((again["query"], again["db"]), ("add_name", "main"))
        # A *! whose second row violates it leaves nothing behind: one transaction.
        many = self.call("add_names", many=[{"name": "tx-new"}, {"name": "only-once"}])
        case.assertEqual(many["error"], "QueryFailed")
        case.assertEqual(self.call("names_like", pattern="tx-new")["result"], "[]")
        case.assertEqual(self.call("count_names")["result"], before)

    def test_missing_row(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(self.call("get_name", id=10**9), {"result": "None", "type": "NoneType"})
        case.assertEqual(self.call("names_like", pattern="no such name%")["result"], "[]")

    def test_injection_strings_stored_verbatim(self) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for text in ("'; DROP TABLE names; --", "x' OR '1'='1", "Robert'); DELETE FROM names;--", ":name %s %(name)s"):
            added = self.call("add_name_returning", name=text)
            case.assertIn(repr(text), added["result"])
            case.assertEqual(self.call("names_like", pattern=text)["result"], repr([{"name": text}]))
        case.assertGreater(int(self.call("count_names")["result"]), 3)

    def test_queries_compiled_at_start(self) -> None:
        """Each query is compiled against the database at start-up, on both engines (SQLite's
        EXPLAIN, PostgreSQL's PREPARE): a misspelt column is a warning naming the file and line."""
        case: SynchronousTestCase = self  # type: ignore[assignment]
        site = self.site()
        site.wait_for(r"\[db\.main pid \d+\] query misspelt \(\S*sql/queries\.sql:\d+\) does not compile against the "
                      r"database: .*nmae", timeout=30)
        text = site.log_text()
        case.assertNotIn("query get_name (", text)  # what compiles is not mentioned
        # zeroblob() is SQLite's own: only PostgreSQL says so.
        case.assertEqual("query add_token_padded (" in text, self.engine == "postgresql")

    def test_wrong_calls_raise_in_the_service(self) -> None:
        """Not granted: QueryRefused; a wrong parameter: TypeError; neither reaches the proxy."""
        case: SynchronousTestCase = self  # type: ignore[assignment]
        refused = self.call("add_value", path="/b", b=True)
        case.assertEqual(refused["error"], "QueryRefused")
        case.assertEqual(self.call("no_such_query")["error"], "QueryRefused")
        wrong = self.call("get_name", idx=1)
        case.assertEqual(wrong["error"], "TypeError")
        case.assertIn("missing id; unexpected idx", wrong["message"])

    def test_thousand_concurrent_calls_from_two_services(self) -> None:
        """500 writes from A and 500 from B at once, on a pool of 4: every one acknowledged and stored.

        (C{queue_max = 500} here: with the default 200, a service's 201st waiting call is refused.)
        """
        site = self.site()
        before = int(self.call("count_tokens")["result"])
        answers: dict[str, dict[str, Any]] = {}

        def burst(path: str) -> None:
            answers[path] = post(site, path, {"op": "burst", "query": "add_token", "n": 500, "prefix": path,
                                              "service": path})

        threads = [threading.Thread(target=burst, args=(path,)) for path in ("/a", "/b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for path in ("/a", "/b"):
            case.assertEqual(answers[path]["failed"], {}, path)
            case.assertEqual(len(answers[path]["acked"]), 500, path)
        case.assertEqual(int(self.call("count_tokens", path="/b")["result"]), before + 1000)

    def test_service_without_db_has_no_channel(self) -> None:
        """Only services with db = NAME are wired to the proxy."""
        site = self.site()
        site.drain_log()
        wired = [line for line in site.lines if "(db)" in line and "wired" in line]
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertTrue(any("wired a.0" in line for line in wired), wired)
        case.assertTrue(any("wired b.0" in line for line in wired), wired)
        case.assertFalse(any("hello" in line for line in wired), wired)

    def test_proxy_maps_no_python_ssl(self) -> None:
        """The proxy never loads Python's ssl nor hashlib's OpenSSL backend (5 MiB of its RSS, for
        nothing): what the kernel maps into it says so.  (psycopg's binary wheel brings its own
        libssl: that one is the PostgreSQL proxy's.)"""
        site = self.site()
        self.call("count_names")
        with open(f"/proc/{site.pids()['db.main']}/maps") as f:
            mapped = {line.split()[-1].rsplit("/", 1)[-1] for line in f if "/" in line}
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual([m for m in mapped if m.startswith(("_ssl.", "_hashlib."))], [])
        if self.engine == "sqlite":
            case.assertEqual([m for m in mapped if m.startswith(("libssl", "libcrypto"))], [])


class SQLiteE2E(DatabaseE2EMixin, E2ETestCase):
    engine = "sqlite"

    @classmethod
    def db_section(cls, site_dir: str) -> str:
        return "\n[db:main]\nurl = sqlite:///data/site.db\nqueries = sql/queries.sql\nschema = sql/schema.sql\npool = 4\nqueue_max = 500\n"

    def test_file_belongs_to_the_proxy(self) -> None:
        """The database file is 0600 in a 0700 directory; as root, both owned by the proxy's uid."""
        site = self.site()
        self.call("count_names")
        data = os.path.join(site.dir, "data")
        self.assertEqual(os.stat(data).st_mode & 0o777, 0o700)
        for name in os.listdir(data):
            self.assertEqual(os.stat(os.path.join(data, name)).st_mode & 0o777, 0o600, name)
        if os.geteuid() == 0:
            with open(f"/proc/{site.pids()['db.main']}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
            self.assertNotEqual(uid, 0)
            self.assertEqual(os.stat(data).st_uid, uid)
            self.assertEqual(os.stat(os.path.join(data, "site.db")).st_uid, uid)


class PostgresE2E(DatabaseE2EMixin, E2ETestCase):
    engine = "postgresql"
    cluster: PostgresCluster | None = None
    if not PostgresCluster.available():
        skip = "PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does)"

    @classmethod
    def db_section(cls, site_dir: str) -> str:
        cluster = PostgresCluster()
        info = cluster.start()
        atexit.register(cluster.stop)
        cls.cluster = cluster
        secrets = os.path.join(site_dir, "secrets")
        os.makedirs(secrets, mode=0o700)
        with open(os.path.join(secrets, "db.password"), "w") as f:
            f.write(info.password + "\n")
        os.chmod(os.path.join(secrets, "db.password"), 0o600)
        return (f"\n[db:main]\nurl = {info.tcp_url()}\npassword_file = secrets/db.password\n"
                "queries = sql/queries.sql\nschema = sql/schema.sql\npool = 4\nqueue_max = 500\n")


    def test_parameters_bound_by_the_server(self) -> None:
        """PostgreSQL's own log shows what it received: the query's text with $1, and the parameter
        apart, verbatim; an integer parameter of SQL is the server's type error, and runs nothing."""
        import psycopg

        from tests.test_e2e_operations import ctl

        site = self.site()
        assert self.cluster is not None and self.cluster.info is not None
        # Sessions opened from now on log every statement: relaunch the proxy (its pool connects anew).
        with psycopg.connect(self.cluster.info.dsn(), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{self.cluster.info.dbname}" SET log_statement = \'all\'')
        try:
            old = site.pids()["db.main"]
            mark = site.mark()
            p = ctl(site, "relaunch", "db.main")
            self.assertEqual(p.returncode, 0, p.stderr)
            site.wait_for(r"db\.main pid %d exited after retiring" % old, after=mark)
            evil = "1; DROP TABLE names; --"
            added = self.call("add_name_returning", name=evil)
            self.assertIn(repr(evil), added["result"])
            refused = self.call("get_name", id=evil)
            self.assertEqual(refused["error"], "QueryFailed", refused)
            self.assertIn("invalid input syntax for type integer", refused["message"])
            self.assertGreater(int(self.call("count_names")["result"]), 0)  # the table is there
            log = self.cluster.server_log()
        finally:
            with psycopg.connect(self.cluster.info.dsn(), autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{self.cluster.info.dbname}" RESET log_statement')
        self.assertRegex(log, r"execute [^:]*: INSERT INTO names \(name\) VALUES \(\$1\) RETURNING id, name")
        self.assertIn("$1 = '1; DROP TABLE names; --'", log)
        self.assertRegex(log, r"STATEMENT:  SELECT id, name FROM names WHERE id = \$1")
        self.assertIn('invalid input syntax for type integer: "1; DROP TABLE names; --"', log)
        self.assertNotRegex(log, r"(?m)statement: .*DROP TABLE names")


class ReloadTests(E2ETestCase):
    """okws-ctl reload: a changed queries or schema file relaunches the proxy (gracefully); grants
    change with the services; a broken file is refused and the site keeps running."""

    def setUp(self) -> None:
        site = Site(SERVICES.replace(GRANTS_A, "add_token count_tokens").replace(GRANTS_B, "count_tokens"), OKWS)
        write_database_files(site.dir, "sqlite")
        with open(site.ini, "a") as f:
            f.write("\n[db:main]\nurl = sqlite:///data/site.db\nqueries = sql/queries.sql\nschema = sql/schema.sql\n")
        self.addCleanup(site.close)
        self.site = site.start()

    def ctl(self, *args: str) -> Any:
        from tests.test_e2e_operations import ctl

        return ctl(self.site, *args)

    def test_status_shows_the_proxy(self) -> None:
        post(self.site, "/a", {"op": "call", "query": "count_tokens"})
        table = self.ctl("status")
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertRegex(table.stdout, r"\ndb\.main\s+%d\s+ready" % self.site.pids()["db.main"])

        def proxy_row() -> dict[str, Any]:
            p = self.ctl("--json", "status")
            [row] = [c for c in json.loads(p.stdout)["result"]["children"] if c["name"] == "db.main"]
            return row

        proxy = proxy_row()
        self.assertEqual((proxy["role"], proxy["state"], proxy["pid"]), ("dbproxy", "ready", self.site.pids()["db.main"]))
        # The heartbeat brings the proxy's counters (every heartbeat_interval, 5 s by default); one
        # taken before both services' channels were attached says fewer, so wait for a later one.
        wait_until(lambda: (proxy_row()["stats"] or {}).get("connections") == 2, 30,
                   "the proxy's heartbeat counting both services' channels", interval=0.5)

    def test_changed_queries_relaunch_the_proxy_without_a_failed_call(self) -> None:
        site = self.site
        pids = site.pids()
        stop = threading.Event()
        results: list[dict[str, Any]] = []

        def load() -> None:
            while not stop.is_set():
                results.append(post(site, "/a", {"op": "call", "query": "add_token",
                                                 "params": {"token": "r", "service": "a"}}))

        thread = threading.Thread(target=load)
        thread.start()
        try:
            with open(os.path.join(site.dir, "sql", "queries.sql"), "a") as f:
                f.write("\n-- name: count_tokens_again()$\nSELECT count(*) FROM tokens;\n")
            mark = site.mark()
            p = self.ctl("reload", "--json")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(json.loads(p.stdout)["result"]["databases"], ["db.main"])
            site.wait_for(r"db\.main pid %d exited after retiring" % pids["db.main"], after=mark)
        finally:
            stop.set()
            thread.join(60)
        self.assertNotEqual(site.pids()["db.main"], pids["db.main"])
        self.assertEqual((site.pids()["a.0"], site.pids()["b.0"]), (pids["a.0"], pids["b.0"]), "services kept")
        self.assertGreater(len(results), 5)
        self.assertEqual([r for r in results if "result" not in r], [], "no call failed across the relaunch")

    def test_grants_change_with_the_service(self) -> None:
        site = self.site
        pids = site.pids()
        self.assertEqual(post(site, "/b", {"op": "call", "query": "add_token",
                                           "params": {"token": "x", "service": "b"}})["error"], "QueryRefused")
        with open(site.ini) as f:
            text = f.read()
        with open(site.ini, "w") as f:
            f.write(text.replace("queries = count_tokens\n", "queries = count_tokens add_token\n"))
        mark = site.mark()
        p = self.ctl("reload", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        result = json.loads(p.stdout)["result"]
        self.assertEqual((result["changed"], result["databases"]), (["b"], []))
        site.wait_for(r"wired b\.0 pid \d+ to the db\.main \(db\)", after=mark)
        self.assertEqual(post(site, "/b", {"op": "call", "query": "add_token",
                                           "params": {"token": "x", "service": "b"}})["result"], "1")
        self.assertEqual(site.pids()["db.main"], pids["db.main"], "the proxy was not relaunched")

    def test_broken_queries_file_is_refused(self) -> None:
        site = self.site
        pid = site.pids()["db.main"]
        with open(os.path.join(site.dir, "sql", "queries.sql"), "a") as f:
            f.write("\n-- name: broken!\nSELECT 1;\n")
        p = self.ctl("reload")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("[db:main] queries: missing mandatory parameter list at sql/queries.sql:", p.stderr + p.stdout)
        self.assertEqual(site.pids()["db.main"], pid)
        self.assertEqual(post(site, "/b", {"op": "call", "query": "count_tokens"})["type"], "int")
