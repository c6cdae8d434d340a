"""Tests for C{[static:NAME]} sections and C{[okws] state_dir} in L{okws_twisted.config}."""

from __future__ import annotations

import os
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ConfigError, ServiceConfig, SiteConfig, parse
from okws_twisted.config.site import STATIC_RESOURCE

SERVICE = """
[service:hello]
resource = services.hello:Hello
paths = /hello
"""

STATIC = """
[static:assets]
root = static
paths = /static /favicon.ico
"""


class StaticSectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.base)
        os.mkdir(os.path.join(self.base, "static"))
        self.addCleanup(os.rmdir, os.path.join(self.base, "static"))

    def parse(self, sections: str, okws: str = "") -> SiteConfig:
        return parse("[okws]\n" + textwrap.dedent(okws) + SERVICE + textwrap.dedent(sections), "site.ini", self.base)

    def error(self, sections: str, expected: str) -> None:
        e = self.assertRaises(ConfigError, self.parse, sections)
        self.assertEqual(str(e), expected)

    def test_defaults(self) -> None:
        """A static pool is a service whose resource is the built-in one: no body, no network."""
        static = self.parse(STATIC).services[1]
        self.assertEqual(static.kind, "static")
        self.assertEqual(static.section, "static:assets")
        self.assertEqual(static.resource, STATIC_RESOURCE)
        self.assertEqual(static.root, os.path.join(self.base, "static"))
        self.assertEqual(static.paths, ("/static", "/favicon.ico"))
        self.assertEqual((static.max_age, static.instances, static.max_body, static.network, static.fork, static.scratch),
                         (3600, 1, 0, "none", False, False))

    def test_keys(self) -> None:
        static = self.parse(STATIC + "max_age = 0\ninstances = 2\nmax_connections = 50\nlazy = yes\nuid = 7000\n").services[1]
        self.assertEqual((static.max_age, static.instances, static.max_connections, static.lazy, static.uid),
                         (0, 2, 50, True, 7000))

    def test_hosts_and_isolation(self) -> None:
        """A static pool takes hosts and isolation as a service does; isolation defaults to the site's."""
        config = self.parse(STATIC + "hosts = WWW.example.com *.example.org\nisolation = request\n")
        static = config.services[1]
        self.assertEqual((static.hosts, static.isolation), (("www.example.com", "*.example.org"), "request"))
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)
        site = self.parse(STATIC, okws="isolation = request\n")
        self.assertEqual([s.isolation for s in site.services], ["request", "request"])
        # A service and a static pool may claim one path on different hosts, never on the same one.
        both = self.parse(STATIC + "hosts = static.example.com\n" + SERVICE.replace("hello]", "other]").replace("/hello", "/static"))
        self.assertEqual([s.name for s in both.services], ["hello", "assets", "other"])
        self.error(STATIC + "hosts = a.example.com\n[service:other]\nresource = a:B\npaths = /static\nhosts = a.example.com\n",
                   "site.ini: [service:other] paths: '/static' on host a.example.com is already claimed by [static:assets]")
        self.error(STATIC + "hosts = a.example.com:80\n",
                   "site.ini: [static:assets] hosts: 'a.example.com:80' has a port; hosts are compared without their port")
        self.error(STATIC + "isolation = sometimes\n",
                   "site.ini: [static:assets] isolation: expected one of connection, request, got 'sometimes'")

    def test_json(self) -> None:
        config = self.parse(STATIC)
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)

    def test_root_absolute(self) -> None:
        config = self.parse(STATIC.replace("root = static", f"root = {self.base}/static/"))
        self.assertEqual(config.services[1].root, os.path.join(self.base, "static"))

    def test_errors(self) -> None:
        missing = os.path.join(self.base, "nope")
        self.error(STATIC.replace("root = static", "root = nope"),
                   f"site.ini: [static:assets] root: {missing!r} is not a directory")
        self.error("[static:assets]\npaths = /s\n", "site.ini: [static:assets] root: missing; expected static")
        self.error("[static:assets]\nroot = static\n", "site.ini: [static:assets] paths: missing; expected /static /favicon.ico")
        self.error(STATIC + "resource = a:B\n",
                   "site.ini: [static:assets] resource: a [static:NAME] section has no resource "
                   "(keys: root, paths, hosts, isolation, max_age, lazy, instances, max_connections, uid, gid, memory_limit)")
        for key in ("network = host", "max_body = 10", "scratch = yes", "fork = yes"):
            e = self.assertRaises(ConfigError, self.parse, STATIC + key + "\n")
            self.assertEqual(e.key, key.split()[0])
        self.error(STATIC + "max_age = -1\n", "site.ini: [static:assets] max_age: expected a whole number of seconds, 0 or more, got '-1'")
        self.error(STATIC + "max_agee = 1\n", "site.ini: [static:assets] max_agee: unknown key; did you mean max_age?")
        self.error(STATIC + "log_dir = x\n", "site.ini: [static:assets] log_dir: unknown key here; log_dir belongs in [okws]")

    def test_root_never_the_sites_own_files(self) -> None:
        """The site directory (site.ini, code), logs, state (secrets) and jails are never served."""
        for root in (".", "static/..", "/"):
            e = self.assertRaises(ConfigError, self.parse, STATIC.replace("root = static", f"root = {root}"))
            self.assertIn("holds the site's own directory", str(e))
        for okws in ("log_dir = static/logs", "state_dir = static", "jail_root = static/jails"):
            e = self.assertRaises(ConfigError, self.parse, STATIC, okws)
            self.assertIn("overlaps", str(e))
            self.assertEqual((e.section, e.key), ("static:assets", "root"))

    def test_one_name_space(self) -> None:
        """Services and static pools are pools, routes and log fields by name: one name space, one path each."""
        self.error(STATIC.replace("assets", "hello"),
                   "site.ini: [static:hello] the name 'hello' is already used by [service:hello]; "
                   "services and static pools share one name space")
        self.error(STATIC.replace("/favicon.ico", "/hello"),
                   "site.ini: [static:assets] paths: '/hello' is already claimed by [service:hello]")

    def test_section_suggestion(self) -> None:
        self.error("[statc:assets]\nroot = static\n",
                   "site.ini: [statc:assets] unknown section; did you mean [static:assets]? "
                   "(sections are [okws], [service:NAME], [static:NAME] and [db:NAME])")

    def test_values_check_themselves(self) -> None:
        """A static ServiceConfig cannot carry a site resource, a relative root, a body or the network."""
        good = {"name": "a", "resource": STATIC_RESOURCE, "paths": ("/s",), "kind": "static", "root": "/srv", "max_body": 0}
        ServiceConfig(**good)  # type: ignore[arg-type]
        for bad in ({"resource": "services.x:Y"}, {"root": "rel"}, {"max_body": 1}, {"network": "host"}, {"kind": "cgi"}):
            self.assertRaises(Exception, ServiceConfig, **{**good, **bad})
        self.assertRaises(Exception, ServiceConfig, name="b", resource="a:B", paths=("/b",), root="/srv")


class StateDirTests(SynchronousTestCase):
    def test_default_and_relative(self) -> None:
        config = parse("[okws]\n" + SERVICE, "site.ini", "/srv/site")
        self.assertEqual(config.state_dir, "/srv/site/state")
        config = parse("[okws]\nstate_dir = /var/lib/okws/mysite\n" + SERVICE, "site.ini", "/srv/site")
        self.assertEqual(config.state_dir, "/var/lib/okws/mysite")

    def test_error(self) -> None:
        e = self.assertRaises(ConfigError, parse, "[okws]\nstate_dir =\n" + SERVICE, "site.ini", "/srv/site")
        self.assertEqual(str(e), "site.ini: [okws] state_dir: expected a directory, got nothing")
