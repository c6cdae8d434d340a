"""Unit tests for the launcher's jail planning (okws_twisted.launcher.jailplan), no root needed."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import parse
from okws_twisted.jail import Bind, JailSpec
from okws_twisted.launcher import jailplan
from tests.e2e import REPO


def site(extra: str = "", services: str = "[service:hello]\nresource = services.hello:Hello\npaths = /hello\n"):
    d = tempfile.mkdtemp()
    return parse(f"[okws]\nuid_range = 60000-60010\n{extra}\n{services}", os.path.join(d, "site.ini"), d)


class UidPlanTests(SynchronousTestCase):
    def test_skips_used_ids_and_gives_each_once(self) -> None:
        plan = jailplan.UidPlan(site(), used={60000, 60002})
        self.assertEqual(plan.ids_for("dispatcher"), (60001, 60001))
        self.assertEqual(plan.ids_for("logd"), (60003, 60003))
        self.assertEqual(plan.ids_for("dispatcher"), (60001, 60001))  # the same key keeps its ids

    def test_fixed_ids(self) -> None:
        s = site("dispatcher_uid = 7000\n", "[service:a]\nresource = a:B\npaths = /a\nuid = 7100\ngid = 7200\n")
        plan = jailplan.UidPlan(s, used=set())
        self.assertEqual(plan.ids_for("dispatcher"), (7000, 7000))
        self.assertEqual(plan.ids_for("service:a", s.services[0]), (7100, 7200))
        self.assertEqual(plan.ids_for("logd"), (60000, 60000))

    def test_range_exhausted(self) -> None:
        plan = jailplan.UidPlan(site(), used=set(range(60000, 60011)))
        self.assertRaises(RuntimeError, plan.ids_for, "logd")

    def test_uids_in_use_sees_this_process(self) -> None:
        self.assertIn(os.getuid(), jailplan.uids_in_use())


class BindTests(SynchronousTestCase):
    def test_service_binds_only_its_package(self) -> None:
        s = site()
        repo = REPO
        s = parse(open(os.path.join(repo, "site.ini")).read(), os.path.join(repo, "site.ini"), repo)
        binds = jailplan.service_binds(s, s.services[0])
        self.assertEqual(binds, [Bind(os.path.join(repo, "services"))])

    def test_python_binds_are_read_only(self) -> None:
        binds = jailplan.python_binds()
        self.assertIn(Bind(sys.base_prefix), binds)
        self.assertFalse(any(b.writable for b in binds))

    def test_spec_round_trip(self) -> None:
        spec = jailplan.jail_for(site(), "hello.0", 60001, 60001, [Bind("/x", True, "/scratch")], new_net=True, may_fork=False)
        self.assertEqual(JailSpec.from_json(spec.to_json()), spec)
        limited = dataclasses.replace(spec, address_space=1 << 30, file_size=1 << 30, processes=80)
        self.assertEqual(JailSpec.from_json(limited.to_json()), limited)
        self.assertTrue(spec.root.endswith("/hello.0"))


class TemplateTreeTests(SynchronousTestCase):
    """The publisher's read access to the operator's template tree: granted only where missing."""

    def tree(self, dir_mode: int, file_mode: int) -> str:
        root = tempfile.mkdtemp()
        os.mkdir(os.path.join(root, "errors"))
        for name in ("a.html", "errors/404.html"):
            with open(os.path.join(root, name), "w") as f:
                f.write("x")
            os.chmod(os.path.join(root, name), file_mode)
        os.chmod(os.path.join(root, "errors"), dir_mode)
        os.chmod(root, dir_mode)
        return root

    def test_world_readable(self) -> None:
        self.assertTrue(jailplan.readable_tree(self.tree(0o755, 0o644), 60001, 60001))

    def test_private(self) -> None:
        self.assertFalse(jailplan.readable_tree(self.tree(0o755, 0o600), 60001, 60001))
        self.assertFalse(jailplan.readable_tree(self.tree(0o700, 0o644), 60001, 60001))

    def test_group(self) -> None:
        root = self.tree(0o750, 0o640)
        gid = os.stat(root).st_gid
        self.assertTrue(jailplan.readable_tree(root, 60001, gid))
        self.assertFalse(jailplan.readable_tree(root, 60001, gid + 1))

    def test_grant_once(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("needs root: giving a file to another group")
        root = self.tree(0o700, 0o600)
        self.assertEqual(jailplan.grant_read(root, 60001), 4)
        self.assertTrue(jailplan.readable_tree(root, 60001, 60001))
        st = os.stat(os.path.join(root, "errors"))
        self.assertEqual((st.st_gid, st.st_mode & 0o7777), (60001, 0o2750))
        self.assertEqual(os.stat(os.path.join(root, "a.html")).st_mode & 0o777, 0o640)
        self.assertEqual(jailplan.grant_read(root, 60001), 0, "nothing left to change")


class DatabaseProxyBindTests(SynchronousTestCase):
    """What a database proxy's jail shows (the owner is this test's own uid, so no root is needed)."""

    def database_site(self, section: str) -> tuple[str, object]:
        d = tempfile.mkdtemp()
        os.makedirs(os.path.join(d, "sql"))
        with open(os.path.join(d, "sql", "q.sql"), "w") as f:
            f.write("-- name: one()$\nSELECT 1;\n")
        with open(os.path.join(d, "pw"), "w") as f:
            f.write("secret\n")
        text = f"[okws]\n[service:a]\nresource = a:B\npaths = /a\ndb = main\nqueries = one\n[db:main]\n{section}"
        return d, parse(text, os.path.join(d, "site.ini"), d).databases[0]  # type: ignore[return-value]

    def test_sqlite_only_its_directory_writable(self) -> None:
        d, db = self.database_site("url = sqlite:///data/site.db\nqueries = sql/q.sql\n")
        os.makedirs(os.path.join(d, "data"), mode=0o755)
        for name in ("site.db", "site.db-wal", "other.txt"):
            with open(os.path.join(d, "data", name), "w"):
                pass
        binds = jailplan.dbproxy_binds(db, os.getuid(), os.getgid())  # type: ignore[arg-type]
        self.assertEqual(binds, [Bind(os.path.join(d, "data"), writable=True)])
        self.assertEqual(os.stat(os.path.join(d, "data")).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(d, "data", "site.db")).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.join(d, "data", "site.db-wal")).st_mode & 0o777, 0o600)
        self.assertNotEqual(os.stat(os.path.join(d, "data", "other.txt")).st_mode & 0o777, 0o600, "only its files")

    def test_sqlite_directory_created(self) -> None:
        d, db = self.database_site("url = sqlite:///fresh/site.db\nqueries = sql/q.sql\n")
        jailplan.dbproxy_binds(db, os.getuid(), os.getgid())  # type: ignore[arg-type]
        self.assertEqual(os.stat(os.path.join(d, "fresh")).st_mode & 0o777, 0o700)

    def test_postgresql_password_file_and_socket(self) -> None:
        d, db = self.database_site("url = postgresql://okws@/site?host=/run/postgresql\npassword_file = pw\n"
                                   "queries = sql/q.sql\n")
        binds = jailplan.dbproxy_binds(db, os.getuid(), os.getgid())  # type: ignore[arg-type]
        self.assertEqual(binds, [Bind(os.path.join(d, "pw")), Bind("/run/postgresql")])
        self.assertFalse(any(b.writable for b in binds))
