"""
A compromised service against its database proxy, as root: the kernel's answer and the proxy's.

The site has an SQLite database (C{[db:main]}, granted to the compromised
service C{evil} and to the honest service C{b}) and, when PostgreSQL is
installed, a second database on a throwaway cluster (C{[db:pg]}, granted to
nobody here but reached by its own proxy with a password file).  The
compromised service (L{tests.sites.dbevil}) tries what a service with remote
code execution would: open the SQLite file and the password file, connect to
PostgreSQL over TCP and its Unix socket, run a query it was not granted (through
its client and raw on its channel), send raw SQL, garbage, a 100 MiB message,
a kind only the proxy may send and 100,000 calls.  Each time: the proxy keeps
its pid, B's calls keep working, the data is untouched, and the refusals are
in error.log with the service, the instance and the query.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
from typing import Any


from tests.e2e import E2ETestCase, Site, process_exists, wait_until
from tests.pgcluster import Conninfo, PostgresCluster
from tests.sites.database import write_database_files
from tests.test_e2e_database import post

IS_ROOT = os.geteuid() == 0

SERVICES = """
[service:evil]
resource = tests.sites.dbevil:Evil
paths = /evil
db = main
queries = count_names add_name

[service:b]
resource = tests.sites.database:Calls
paths = /b
db = main
queries = count_names get_name add_token count_tokens all_names

[db:main]
url = sqlite:///data/site.db
queries = sql/queries.sql
schema = sql/schema.sql
pool = 4
queue_max = 50
query_timeout = 3
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


class CompromisedServiceTests(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: the launcher only jails children when it runs as root"

    _site: Site | None = None
    pg: Conninfo | None = None

    @classmethod
    def site(cls) -> Site:
        if cls._site is None:
            jail_root = os.path.join("/var/lib/okws-test", os.urandom(4).hex())
            site = Site(SERVICES, f"jail_root = {jail_root}\nrestart_delay_min = 0.2\n")
            write_database_files(site.dir, "sqlite")
            if PostgresCluster.available():
                cluster = PostgresCluster()
                cls.pg = cluster.start()
                atexit.register(cluster.stop)
                os.makedirs(os.path.join(site.dir, "secrets"), mode=0o700)
                with open(os.path.join(site.dir, "secrets", "pg.password"), "w") as f:
                    f.write(cls.pg.password + "\n")
                with open(os.path.join(site.dir, "sql", "pg.sql"), "w") as f:
                    f.write("-- name: one()$\nSELECT 1;\n")
                with open(site.ini, "a") as f:
                    f.write(f"\n[db:pg]\nurl = {cls.pg.tcp_url()}\npassword_file = secrets/pg.password\n"
                            "queries = sql/pg.sql\n")
                    # The same server through its Unix socket: the directory is bound read-only
                    # into the proxy's jail.
                    f.write(f"\n[db:pgsock]\nurl = {cls.pg.socket_url()}\npassword_file = secrets/pg.password\n"
                            "queries = sql/pg.sql\n\n[service:pgs]\nresource = tests.sites.database:Calls\n"
                            "paths = /pgs\ndb = pgsock\nqueries = one\n")
            atexit.register(site.close)
            cls._site = site
            site.start()
        return cls._site

    def evil(self, command: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        return post(self.site(), "/evil", command, timeout)

    def b(self, query: str, **params: Any) -> dict[str, Any]:
        return post(self.site(), "/b", {"op": "call", "query": query, "params": params})

    def proxy_pid(self) -> int:
        return self.site().pids()["db.main"]

    def fresh_evil_channel(self) -> None:
        """Make sure evil has a db channel: after an attack the proxy closed it, so relaunch evil."""
        site = self.site()
        status = self.evil({"op": "call", "query": "count_names"})
        if "result" in status:
            return
        mark = site.mark()
        self.evil({"op": "die"})
        site.wait_for(r"wired evil\.0 pid \d+ to the db\.main \(db\)", after=mark)

    def assertProxyUnharmed(self, pid: int) -> None:
        self.assertEqual(self.proxy_pid(), pid)
        self.assertTrue(process_exists(pid))
        self.assertLess(rss_kib(pid), 100 * 1024, "the proxy's memory stays small")
        self.assertEqual(self.b("get_name", id=10**9)["result"], "None")

    # -- the kernel's answers

    def test_no_file_no_network(self) -> None:
        site = self.site()
        paths = [os.path.join(site.dir, "data", "site.db"), os.path.join(site.dir, "data"),
                 os.path.join(site.dir, "sql", "queries.sql"), os.path.join(site.dir, "site.ini")]
        if self.pg is not None:
            paths.append(os.path.join(site.dir, "secrets", "pg.password"))
        report = self.evil({"op": "files", "paths": paths})
        self.assertEqual(set(report.values()), {"ENOENT"}, report)
        if self.pg is not None:
            net = self.evil({"op": "connect", "tcp": [self.pg.host, self.pg.port],
                             "unix": os.path.join(self.pg.sockdir, f".s.PGSQL.{self.pg.port}")})
            self.assertNotIn("SUCCEEDED", net.values(), net)
            self.assertEqual(net["tcp"], "EPERM", net)

    def test_proxy_jail(self) -> None:
        """The SQLite proxy: its own uid, no network namespace of the host, only the data directory."""
        site = self.site()
        pid = self.proxy_pid()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        uid = int(status["Uid"].split()[0])
        self.assertNotEqual(uid, 0)
        self.assertEqual(int(status["CapEff"], 16), 0)
        self.assertEqual(status["NoNewPrivs"].strip(), "1")
        self.assertNotEqual(os.readlink(f"/proc/{pid}/ns/net"), os.readlink("/proc/self/ns/net"))
        with open(f"/proc/{pid}/mountinfo") as f:
            writable = [line.split()[4] for line in f if " rw," in line or line.split()[5].startswith("rw")]
        self.assertEqual([m for m in writable if m.endswith("/data")], [os.path.join(site.dir, "data")])
        for name in ("evil.0", "b.0"):
            self.assertNotEqual(int(open(f"/proc/{site.pids()[name]}/status").read().split("Uid:")[1].split()[0]), uid)
        if self.pg is not None:
            pg = site.pids()["db.pg"]
            self.assertEqual(os.readlink(f"/proc/{pg}/ns/net"), os.readlink("/proc/self/ns/net"))

    def test_postgresql_over_its_unix_socket(self) -> None:
        """A PostgreSQL proxy reaches the server through the socket directory bound read-only in its jail."""
        if self.pg is None:
            raise self.skipTest("PostgreSQL's server is not installed")
        self.site()
        self.assertEqual(post(self.site(), "/pgs", {"op": "call", "query": "one"}), {"result": "1", "type": "int"})

    # -- the proxy's answers

    def test_query_not_granted(self) -> None:
        """Through the client: refused before sending.  Raw on the channel: refused by the proxy, logged."""
        self.fresh_evil_channel()
        site = self.site()
        before = self.b("all_names")["result"]
        refused = self.evil({"op": "call", "query": "get_name", "params": {"id": 1}})
        self.assertEqual(refused["error"], "QueryRefused")
        mark = site.mark()
        raw = self.evil({"op": "raw", "attack": "calls", "calls": [
            ["get_name", {"id": 1}],                          # b's, not evil's
            ["add_value", {}],                                # nobody's here
            ["SELECT * FROM names", {}],                      # raw SQL as a name
            ["count_names; DROP TABLE names", {}],
            ["add_name", {"name": "x", "extra": "'; DROP TABLE names; --"}],  # a parameter too many
            ["add_name", {"name": {"T": "not a date"}}],      # a malformed value
            ["add_name", {"name": "'; DROP TABLE names; --"}],  # granted: stored verbatim
        ]})
        self.assertEqual(raw["answered"], 7, raw)
        self.assertEqual(raw["statuses"], {"refused": 6, "ok": 1}, raw)
        site.wait_for(r"\[db\.main pid \d+\].*refused 'get_name' is not a query service evil was granted"
                      r"|refused get_name to evil\.0", after=mark)
        after = self.b("all_names")["result"]
        self.assertEqual(after.count("DROP TABLE"), before.count("DROP TABLE") + 1)
        text = site.wait_for_log("error.log", lambda t: "refused SELECT * FROM names to evil.0" in t)
        self.assertRegex(text, r"\[db\.main pid \d+\] refused get_name to evil\.0: 'get_name' is not a query "
                               r"service evil was granted on \[db:main\]")

    def test_flood_of_calls(self) -> None:
        """100,000 calls: queue_max (50) holds, the proxy stays up, and B is served meanwhile."""
        self.fresh_evil_channel()
        pid = self.proxy_pid()
        b_answers: list[dict[str, Any]] = []
        done = threading.Event()

        def honest() -> None:
            while not done.is_set() and len(b_answers) < 200:
                b_answers.append(self.b("count_tokens"))

        thread = threading.Thread(target=honest)
        thread.start()
        try:
            flood = self.evil({"op": "raw", "attack": "flood", "query": "count_names", "n": 100_000})
        finally:
            done.set()
            thread.join(60)
        self.assertEqual(flood["answered"], 100_000, flood)
        self.assertEqual(set(flood["statuses"]) - {"ok", "unavailable"}, set(), flood)
        # queue_max holds at every instant: the proxy never held more than 50 of one service's calls
        # (its peak, from a heartbeat after the flood), and what came past them was refused at once.
        # How many the pool ran meanwhile depends on how the machine shares its two cores (5-18% of
        # the flood in runs at load 0.7-7): that count is not a property, so it is not asserted.
        self.assertGreater(flood["statuses"].get("unavailable", 0), 0, flood)
        stats = self.proxy_stats_after(flood["statuses"]["unavailable"])
        self.assertEqual(stats["peak_held"], 50, stats)
        self.assertTrue(all(re.match(r"queue full: service evil already has queue_max \(50\)", m)
                            for m in flood["messages"]), flood)
        self.assertTrue(b_answers and all("result" in a for a in b_answers), b_answers[-3:])
        self.assertProxyUnharmed(pid)

    def proxy_stats_after(self, unavailable: int) -> dict[str, Any]:
        """The proxy's counters from a heartbeat that counts at least C{unavailable} refusals."""
        from tests.test_e2e_operations import ctl

        stats: dict[str, Any] = {}

        def counted() -> bool:
            p = ctl(self.site(), "--json", "status")
            [row] = [c for c in json.loads(p.stdout)["result"]["children"] if c["name"] == "db.main"]
            stats.clear()
            stats.update(row["stats"] or {})
            return stats.get("unavailable", 0) >= unavailable

        wait_until(counted, 30, f"a heartbeat of the proxy counting {unavailable} refusals", interval=0.5)
        return stats

    def assertChannelClosedAlone(self, attack: str, log: str) -> dict[str, Any]:
        self.fresh_evil_channel()
        site = self.site()
        pid = self.proxy_pid()
        mark = site.mark()
        answer = self.evil({"op": "raw", "attack": attack})
        site.wait_for(r"\[db\.main pid %d\].*%s" % (pid, log), after=mark)
        self.assertProxyUnharmed(pid)
        # Its own channel is gone: its next call fails (within query_timeout), the proxy still serves B.
        self.assertEqual(self.evil({"op": "call", "query": "count_names"})["error"], "DatabaseUnavailable")
        return answer

    def test_garbage_closes_only_its_channel(self) -> None:
        self.assertChannelClosedAlone("garbage", "db:evil.0: unsupported channel version 7")

    def test_100_MiB_message_refused_before_buffering(self) -> None:
        answer = self.assertChannelClosedAlone("huge", r"db:evil\.0: a 104857600-byte payload is over this "
                                                       r"channel's limit of 1048576")
        self.assertLess(answer["sent"], 100 * 1024 * 1024, answer)

    def test_kind_only_the_proxy_sends(self) -> None:
        self.assertChannelClosedAlone("replies", r"bad message from evil\.0: unexpected 'replies' message from a "
                                                 r"service; closing its db channel")
