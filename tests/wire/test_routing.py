"""Tests for L{okws_twisted.wire.routing}: which service owns a request, by host then by path."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import host_pattern_matches, normalize_host, parse
from okws_twisted.wire.routing import ANY_HOST, Route, RouteTable, host_key


def paths_table(routes: dict[str, str]) -> RouteTable:
    """A table of services without hosts: path prefix -> service."""
    return RouteTable([(None, prefix, service) for prefix, service in routes.items()])


def svc(table: RouteTable, path: bytes, host: bytes | None = b"example.com") -> str | None:
    """The service C{table} routes C{path} on C{host} to, or None."""
    found = table.route(host, path)
    return None if found is None else found.service


SITE = [
    ("admin.example.com", "/", "admin"),
    ("*.example.org", "/", "org"),
    ("*.example.org", "/api", "orgapi"),
    ("*.b.example.org", "/", "deep"),
    ("exact.example.org", "/x", "exactx"),
    (None, "/", "www"),
    (None, "/static", "static"),
    ("[2001:db8::1]", "/", "v6"),
    ("192.0.2.7", "/", "v4"),
]


class HostKeyTests(SynchronousTestCase):
    def test_caseAndPort(self) -> None:
        self.assertEqual(host_key(b"Admin.Example.COM:8443"), b"admin.example.com")
        self.assertEqual(host_key(b"admin.example.com."), b"admin.example.com")
        self.assertEqual(host_key(b"admin.example.com.:80"), b"admin.example.com")
        self.assertEqual(host_key(b"[2001:DB8::1]:443"), b"[2001:db8::1]")
        self.assertEqual(host_key(b"[::1]"), b"[::1]")
        self.assertEqual(host_key(b"192.0.2.7:80"), b"192.0.2.7")

    def test_none(self) -> None:
        self.assertIsNone(host_key(None))
        self.assertIsNone(host_key(b""))
        self.assertIsNone(host_key(b"."))
        self.assertIsNone(host_key(b":80"))


class NormalizeHostTests(SynchronousTestCase):
    """The config's spelling rules for C{hosts} items (L{okws_twisted.config.normalize_host})."""

    def test_good(self) -> None:
        self.assertEqual(normalize_host("Admin.Example.com."), "admin.example.com")
        self.assertEqual(normalize_host("*.Example.org"), "*.example.org")
        self.assertEqual(normalize_host("[2001:DB8::1]"), "[2001:db8::1]")
        self.assertEqual(normalize_host("xn--bcher-kva.example"), "xn--bcher-kva.example")
        self.assertEqual(normalize_host("localhost"), "localhost")

    def test_bad(self) -> None:
        for bad, words in [
            ("example.com:80", "port"),
            ("a.*.example.com", "first label"),
            ("*example.com", "first label"),
            ("**.example.com", "first label"),
            ("bücher.example", "xn--"),
            ("-a.example", "not a host"),
            ("a..example", "not a host"),
            ("", "expected"),
            ("*.192.0.2.1", "IP address"),
            ("a_b.example", "not a host"),
            ("x" * 64 + ".example", "not a host"),
        ]:
            with self.assertRaises(ValueError, msg=bad) as cm:
                normalize_host(bad)
            self.assertIn(words, str(cm.exception), bad)


class HostRoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = RouteTable(SITE)

    def service(self, host: bytes | None, path: bytes = b"/") -> str | None:
        found = self.table.route(host, path)
        return None if found is None else found.service

    def test_exact(self) -> None:
        self.assertEqual(self.table.route(b"admin.example.com", b"/users"), Route("admin", "admin.example.com"))

    def test_exactIsCaseInsensitiveWithoutPort(self) -> None:
        for host in (b"ADMIN.example.com", b"admin.example.com:8080", b"admin.example.com.", b"Admin.Example.Com.:1"):
            self.assertEqual(self.service(host), "admin", host)

    def test_wildcardOneOrMoreLabels(self) -> None:
        self.assertEqual(self.table.route(b"a.example.org", b"/"), Route("org", "*.example.org"))
        self.assertEqual(self.service(b"x.y.example.org"), "org")
        self.assertEqual(self.service(b"a.example.org", b"/api/v1"), "orgapi")

    def test_wildcardNotTheBareDomain(self) -> None:
        self.assertEqual(self.table.route(b"example.org", b"/"), Route("www", ANY_HOST))

    def test_longestWildcardWins(self) -> None:
        self.assertEqual(self.service(b"c.b.example.org"), "deep")
        self.assertEqual(self.service(b"b.example.org"), "org")  # *.b.example.org needs a label before .b

    def test_exactBeatsWildcardNoFallThrough(self) -> None:
        """exact.example.org is named exactly: its own group only, even for a path it does not route."""
        self.assertEqual(self.service(b"exact.example.org", b"/x/1"), "exactx")
        self.assertIsNone(self.service(b"exact.example.org", b"/"))
        self.assertEqual(self.service(b"admin.example.com.evil", b"/"), "www")

    def test_wildcardBeatsNoHostsNoFallThrough(self) -> None:
        # The no-hosts group routes /static; a host a wildcard takes never reaches it.
        self.assertEqual(self.service(b"a.example.org", b"/static"), "org")
        self.assertEqual(self.service(b"a.example.org", b"/static/x"), "org")

    def test_noHostsTakeEveryUnnamedHost(self) -> None:
        for host in (b"unknown.example", b"example.com", None, b"www.example.com:80", b"admin.example.com.evil"):
            self.assertEqual(self.service(host, b"/static/a"), "static", host)
            self.assertEqual(self.service(host, b"/"), "www", host)

    def test_ipLiterals(self) -> None:
        self.assertEqual(self.service(b"[2001:DB8::1]:8443"), "v6")
        self.assertEqual(self.service(b"192.0.2.7:80"), "v4")
        self.assertEqual(self.service(b"192.0.2.8"), "www")

    def test_oddHosts(self) -> None:
        """Hosts the head parser accepts but that name nothing route to the no-hosts group."""
        for host in (b".example.org", b"..example.org", b"a%2eexample.org", b"%61dmin.example.com"):
            self.assertEqual(self.service(host), "www", host)
        # Percent-encoding is not decoded (as in paths): a label is a label.
        self.assertEqual(self.service(b"%41.example.org"), "org")


class UnknownHostTests(SynchronousTestCase):
    ROUTES = [("www.example.com", "/", "www"), ("*.example.com", "/", "tenants"), ("admin.example.com", "/", "admin")]

    def test_404(self) -> None:
        table = RouteTable(self.ROUTES)
        self.assertIsNone(table.route(b"example.net", b"/"))
        self.assertIsNone(table.route(None, b"/"))
        self.assertIsNone(table.route(b"example.com", b"/"))

    def test_defaultHost(self) -> None:
        table = RouteTable(self.ROUTES, default_host="WWW.example.com")
        self.assertEqual(table.route(b"example.net", b"/"), Route("www", "www.example.com"))
        self.assertEqual(table.route(None, b"/a"), Route("www", "www.example.com"))
        self.assertEqual(table.route(b"admin.example.com", b"/"), Route("admin", "admin.example.com"))

    def test_defaultHostByWildcard(self) -> None:
        table = RouteTable(self.ROUTES, default_host="shop.example.com")
        self.assertEqual(table.route(b"example.net", b"/"), Route("tenants", "*.example.com"))

    def test_defaultHostChecked(self) -> None:
        for default, words in [
            ("nobody.example.net", "not served"),
            ("*.example.com", "not a wildcard"),
            ("www.example.com:80", "port"),
        ]:
            with self.assertRaises(ValueError) as cm:
                RouteTable(self.ROUTES, default_host=default)
            self.assertIn(words.split()[-1], str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            RouteTable(self.ROUTES + [(None, "/", "any")], default_host="www.example.com")
        self.assertIn("never be used", str(cm.exception))


class ClashTests(SynchronousTestCase):
    def test_samePathOtherHostsIsFine(self) -> None:
        table = RouteTable([("a.example", "/", "a"), ("b.example", "/", "b"), (None, "/", "c")])
        self.assertEqual(table.route(b"b.example", b"/").service, "b")

    def test_samePathSameHostTwice(self) -> None:
        with self.assertRaises(ValueError):
            RouteTable([("A.example", "/x", "a"), ("a.example.", "/x/", "b")])

    def test_twoServicesShareAHostByPath(self) -> None:
        table = RouteTable([("a.example", "/users", "users"), ("a.example", "/billing", "billing")])
        self.assertEqual(table.route(b"a.example", b"/billing/1").service, "billing")
        self.assertIsNone(table.route(b"a.example", b"/"))


class PathsUnchangedTests(SynchronousTestCase):
    """Today's path rules hold inside a group."""

    def test_boundaryAndLongest(self) -> None:
        table = RouteTable([(None, "/a", "a"), (None, "/a/b", "ab"), ("h.example", "/a", "ha")])
        self.assertEqual(table.route(b"x", b"/a/bc").service, "a")
        self.assertEqual(table.route(b"x", b"/a/b/c").service, "ab")
        self.assertIsNone(table.route(b"x", b"/ab"))
        self.assertEqual(table.route(b"h.example", b"/a/b").service, "ha")

    def test_noAllocationPerLookup(self) -> None:
        table = RouteTable(SITE)
        self.assertIs(table.route(b"a.example.org", b"/"), table.route(b"Q.example.org:1", b"/zzz"))


class CostTests(SynchronousTestCase):
    def test_hugeHostIsCheap(self) -> None:
        """A host of thousands of labels costs no more probes than the longest wildcard suffix."""
        table = RouteTable(SITE)
        host = b"a." * 8000 + b"example.org"
        start = time.perf_counter()
        for _ in range(1000):
            table.route(host, b"/")
        self.assertLess(time.perf_counter() - start, 0.5)
        self.assertEqual(table.route(host, b"/").service, "org")


class BoundaryTests(SynchronousTestCase):
    """A prefix matches at a "/" boundary only."""

    def setUp(self) -> None:
        self.table = paths_table({"/hello": "hello"})

    def test_itself(self) -> None:
        self.assertEqual(svc(self.table, b"/hello"), "hello")

    def test_below(self) -> None:
        self.assertEqual(svc(self.table, b"/hello/"), "hello")
        self.assertEqual(svc(self.table, b"/hello/x"), "hello")
        self.assertEqual(svc(self.table, b"/hello/x/y/z"), "hello")

    def test_notASiblingName(self) -> None:
        self.assertIsNone(svc(self.table, b"/helloworld"))
        self.assertIsNone(svc(self.table, b"/hell"))
        self.assertIsNone(svc(self.table, b"/helloworld/x"))

    def test_trailingSlashInConfig(self) -> None:
        table = paths_table({"/hello/": "hello"})
        self.assertEqual(svc(table, b"/hello"), "hello")
        self.assertEqual(svc(table, b"/hello/a"), "hello")


class LongestMatchTests(SynchronousTestCase):
    """The longest matching prefix wins, whatever the order given."""

    def test_longest(self) -> None:
        for routes in ({"/a": "a", "/a/b": "ab", "/a/b/c": "abc"},
                       {"/a/b/c": "abc", "/a/b": "ab", "/a": "a"}):
            table = paths_table(routes)
            self.assertEqual(svc(table, b"/a"), "a")
            self.assertEqual(svc(table, b"/a/x"), "a")
            self.assertEqual(svc(table, b"/a/b"), "ab")
            self.assertEqual(svc(table, b"/a/bc"), "a")
            self.assertEqual(svc(table, b"/a/b/c/d"), "abc")
            self.assertEqual(svc(table, b"/a/b/cd"), "ab")


class CatchAllTests(SynchronousTestCase):
    """"/" takes whatever nothing longer matches."""

    def setUp(self) -> None:
        self.table = paths_table({"/": "root", "/api": "api"})

    def test_root(self) -> None:
        self.assertEqual(svc(self.table, b"/"), "root")
        self.assertEqual(svc(self.table, b"/anything/at/all"), "root")
        self.assertEqual(svc(self.table, b"/apix"), "root")

    def test_longerWins(self) -> None:
        self.assertEqual(svc(self.table, b"/api/v1"), "api")

    def test_oddTargets(self) -> None:
        """Targets the head parser should have refused still route safely."""
        self.assertEqual(svc(self.table, b""), "root")
        self.assertEqual(svc(self.table, b"*"), "root")
        self.assertEqual(svc(self.table, b"//api"), "root")
        self.assertEqual(svc(self.table, b"http://x/api"), "root")


class NoMatchTests(SynchronousTestCase):
    """Without a catch-all, an unclaimed path has no service (a 404)."""

    def test_none(self) -> None:
        table = paths_table({"/a": "a"})
        for path in (b"/", b"", b"/b", b"/b/a", b"a", b"//a", b"/A"):
            self.assertIsNone(svc(table, path), path)

    def test_empty(self) -> None:
        self.assertIsNone(svc(paths_table({}), b"/a"))
        self.assertEqual(len(paths_table({})), 0)


class RawBytesTests(SynchronousTestCase):
    """Paths compare byte for byte: no decoding, no folding, no normalisation."""

    def test_noPercentDecoding(self) -> None:
        table = paths_table({"/caf%C3%A9": "cafe", "/a": "a"})
        self.assertEqual(svc(table, b"/caf%C3%A9/menu"), "cafe")
        self.assertIsNone(svc(table, b"/caf%c3%a9"))
        self.assertIsNone(svc(table, "/café".encode()))
        self.assertIsNone(svc(table, b"/%61"))
        self.assertIsNone(svc(table, b"/a%2Fb"))

    def test_encodedSlashIsNotABoundary(self) -> None:
        table = paths_table({"/a/b": "ab", "/a": "a"})
        self.assertIsNone(svc(table, b"/a%2Fb"))
        self.assertEqual(svc(table, b"/a/b%2Fc"), "a")
        self.assertEqual(svc(table, b"/a/b/%2Fc"), "ab")

    def test_caseSensitive(self) -> None:
        self.assertIsNone(svc(paths_table({"/hello": "h"}), b"/HELLO"))

    def test_dotSegmentsNotResolved(self) -> None:
        table = paths_table({"/public": "public", "/admin": "admin"})
        self.assertEqual(svc(table, b"/public/../admin"), "public")


class ManyRoutesTests(SynchronousTestCase):
    """Many routes, deep and long paths."""

    def test_many(self) -> None:
        routes = {f"/s{i}": f"svc{i}" for i in range(100)}
        routes.update({f"/s{i}/deep/er": f"deep{i}" for i in range(100)})
        table = paths_table(routes)
        self.assertEqual(len(table), 200)
        for i in range(100):
            self.assertEqual(svc(table, f"/s{i}/a/b/c/d".encode()), f"svc{i}")
            self.assertEqual(svc(table, f"/s{i}/deep/er/x".encode()), f"deep{i}")
            self.assertEqual(svc(table, f"/s{i}/deep/err".encode()), f"svc{i}")
        self.assertIsNone(svc(table, b"/s100"))

    def test_pathLongerThanEveryRoute(self) -> None:
        """A huge path costs no more than one as long as the longest route."""
        table = paths_table({"/a/b": "ab", "/": "root"})
        self.assertEqual(svc(table, b"/a/b" + b"/x" * 100_000), "ab")
        self.assertEqual(svc(table, b"/a/bb" + b"/x" * 100_000), "root")
        self.assertEqual(svc(table, b"/a/b" + b"x" * 100_000), "root")
        self.assertEqual(svc(table, b"/" * 100_000), "root")
        self.assertIsNone(svc(paths_table({"/a/b": "ab"}), b"/a/bx/c"))


class ConstructionTests(SynchronousTestCase):
    """Routes are checked like the config's paths; tables come from the config."""

    def test_fromConfig(self) -> None:
        site = parse(
            "[okws]\n[service:hello]\nresource = a:B\npaths = /hello /hi/\n"
            "[service:root]\nresource = a:B\npaths = /\n",
            "site.ini", "/srv",
        )
        table = RouteTable.from_config(site)
        self.assertEqual(svc(table, b"/hi/there"), "hello")
        self.assertEqual(svc(table, b"/hello"), "hello")
        self.assertEqual(svc(table, b"/other"), "root")
        self.assertEqual(len(table), 3)

    def test_badPrefix(self) -> None:
        for prefix in ("hello", "/a?b", "/a//b", "/a/../b", "/café", "/a b"):
            self.assertRaises(ValueError, paths_table, {prefix: "x"})

    def test_badService(self) -> None:
        self.assertRaises(ValueError, paths_table, {"/a": ""})
        self.assertRaises(ValueError, paths_table, {"/a": None})

    def test_twoSpellings(self) -> None:
        e = self.assertRaises(ValueError, paths_table, {"/a": "x", "/a/": "y"})
        self.assertEqual(str(e), "route '/a/' is given twice")

    def test_repr(self) -> None:
        self.assertEqual(repr(paths_table({"/b": "b", "/": "r", "/a/": "a"})),
                         "RouteTable([(None, '/', 'r'), (None, '/a', 'a'), (None, '/b', 'b')])")


class AgreesWithTheConfigTests(SynchronousTestCase):
    """The table's probes take exactly the hosts the config's rule (host_pattern_matches) says."""

    def test_wildcards(self) -> None:
        patterns = ["*.example.org", "*.b.example.org", "exact.example.org"]
        table = RouteTable([(p, "/", p) for p in patterns])
        hosts = [b"example.org", b"a.example.org", b"b.example.org", b"c.b.example.org", b"x.y.b.example.org",
                 b"exact.example.org", b"a.exact.example.org", b".example.org", b"a..example.org", b"org", b"a.org"]
        for host in hosts:
            name = host.decode()
            exact = [p for p in patterns if p == name]
            wild = sorted((p for p in patterns if p.startswith("*.") and host_pattern_matches(p, name)), key=len)
            expected = exact[0] if exact else (wild[-1] if wild else None)
            self.assertEqual(svc(table, b"/", host), expected, host)

    def test_fromConfigWithHosts(self) -> None:
        site = parse(
            "[okws]\ndefault_host = www.example.com\n"
            "[service:www]\nresource = a:B\npaths = /\nhosts = www.example.com\n"
            "[service:admin]\nresource = a:B\npaths = /\nhosts = admin.example.com *.admin.example.com\n",
            "site.ini", "/srv",
        )
        table = RouteTable.from_config(site)
        self.assertEqual(table.route(b"x.admin.example.com", b"/"), Route("admin", "*.admin.example.com"))
        self.assertEqual(table.route(b"unknown.example", b"/"), Route("www", "www.example.com"))
        self.assertEqual(len(table), 3)
