"""Tests for L{okws_twisted.wire.routing}: which service owns a request path."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import parse
from okws_twisted.wire.routing import RouteTable


class BoundaryTests(SynchronousTestCase):
    """A prefix matches at a "/" boundary only."""

    def setUp(self) -> None:
        self.table = RouteTable({"/hello": "hello"})

    def test_itself(self) -> None:
        self.assertEqual(self.table.route(b"/hello"), "hello")

    def test_below(self) -> None:
        self.assertEqual(self.table.route(b"/hello/"), "hello")
        self.assertEqual(self.table.route(b"/hello/x"), "hello")
        self.assertEqual(self.table.route(b"/hello/x/y/z"), "hello")

    def test_notASiblingName(self) -> None:
        self.assertIsNone(self.table.route(b"/helloworld"))
        self.assertIsNone(self.table.route(b"/hell"))
        self.assertIsNone(self.table.route(b"/helloworld/x"))

    def test_trailingSlashInConfig(self) -> None:
        table = RouteTable({"/hello/": "hello"})
        self.assertEqual(table.route(b"/hello"), "hello")
        self.assertEqual(table.route(b"/hello/a"), "hello")


class LongestMatchTests(SynchronousTestCase):
    """The longest matching prefix wins, whatever the order given."""

    def test_longest(self) -> None:
        for routes in ({"/a": "a", "/a/b": "ab", "/a/b/c": "abc"},
                       {"/a/b/c": "abc", "/a/b": "ab", "/a": "a"}):
            table = RouteTable(routes)
            self.assertEqual(table.route(b"/a"), "a")
            self.assertEqual(table.route(b"/a/x"), "a")
            self.assertEqual(table.route(b"/a/b"), "ab")
            self.assertEqual(table.route(b"/a/bc"), "a")
            self.assertEqual(table.route(b"/a/b/c/d"), "abc")
            self.assertEqual(table.route(b"/a/b/cd"), "ab")


class CatchAllTests(SynchronousTestCase):
    """"/" takes whatever nothing longer matches."""

    def setUp(self) -> None:
        self.table = RouteTable({"/": "root", "/api": "api"})

    def test_root(self) -> None:
        self.assertEqual(self.table.route(b"/"), "root")
        self.assertEqual(self.table.route(b"/anything/at/all"), "root")
        self.assertEqual(self.table.route(b"/apix"), "root")

    def test_longerWins(self) -> None:
        self.assertEqual(self.table.route(b"/api/v1"), "api")

    def test_oddTargets(self) -> None:
        """Targets the head parser should have refused still route safely."""
        self.assertEqual(self.table.route(b""), "root")
        self.assertEqual(self.table.route(b"*"), "root")
        self.assertEqual(self.table.route(b"//api"), "root")
        self.assertEqual(self.table.route(b"http://x/api"), "root")


class NoMatchTests(SynchronousTestCase):
    """Without a catch-all, an unclaimed path has no service (a 404)."""

    def test_none(self) -> None:
        table = RouteTable({"/a": "a"})
        for path in (b"/", b"", b"/b", b"/b/a", b"a", b"//a", b"/A"):
            self.assertIsNone(table.route(path), path)

    def test_empty(self) -> None:
        self.assertIsNone(RouteTable({}).route(b"/a"))
        self.assertEqual(len(RouteTable({})), 0)


class RawBytesTests(SynchronousTestCase):
    """Paths compare byte for byte: no decoding, no folding, no normalisation."""

    def test_noPercentDecoding(self) -> None:
        table = RouteTable({"/caf%C3%A9": "cafe", "/a": "a"})
        self.assertEqual(table.route(b"/caf%C3%A9/menu"), "cafe")
        self.assertIsNone(table.route(b"/caf%c3%a9"))
        self.assertIsNone(table.route("/café".encode()))
        self.assertIsNone(table.route(b"/%61"))
        self.assertIsNone(table.route(b"/a%2Fb"))

    def test_encodedSlashIsNotABoundary(self) -> None:
        table = RouteTable({"/a/b": "ab", "/a": "a"})
        self.assertIsNone(table.route(b"/a%2Fb"))
        self.assertEqual(table.route(b"/a/b%2Fc"), "a")
        self.assertEqual(table.route(b"/a/b/%2Fc"), "ab")

    def test_caseSensitive(self) -> None:
        self.assertIsNone(RouteTable({"/hello": "h"}).route(b"/HELLO"))

    def test_dotSegmentsNotResolved(self) -> None:
        table = RouteTable({"/public": "public", "/admin": "admin"})
        self.assertEqual(table.route(b"/public/../admin"), "public")


class ManyRoutesTests(SynchronousTestCase):
    """Many routes, deep and long paths."""

    def test_many(self) -> None:
        routes = {f"/s{i}": f"svc{i}" for i in range(100)}
        routes.update({f"/s{i}/deep/er": f"deep{i}" for i in range(100)})
        table = RouteTable(routes)
        self.assertEqual(len(table), 200)
        for i in range(100):
            self.assertEqual(table.route(f"/s{i}/a/b/c/d".encode()), f"svc{i}")
            self.assertEqual(table.route(f"/s{i}/deep/er/x".encode()), f"deep{i}")
            self.assertEqual(table.route(f"/s{i}/deep/err".encode()), f"svc{i}")
        self.assertIsNone(table.route(b"/s100"))

    def test_pathLongerThanEveryRoute(self) -> None:
        """A huge path costs no more than one as long as the longest route."""
        table = RouteTable({"/a/b": "ab", "/": "root"})
        self.assertEqual(table.route(b"/a/b" + b"/x" * 100_000), "ab")
        self.assertEqual(table.route(b"/a/bb" + b"/x" * 100_000), "root")
        self.assertEqual(table.route(b"/a/b" + b"x" * 100_000), "root")
        self.assertEqual(table.route(b"/" * 100_000), "root")
        self.assertIsNone(RouteTable({"/a/b": "ab"}).route(b"/a/bx/c"))


class ConstructionTests(SynchronousTestCase):
    """Routes are checked like the config's paths; tables come from the config."""

    def test_fromConfig(self) -> None:
        site = parse(
            "[okws]\n[service:hello]\nresource = a:B\npaths = /hello /hi/\n"
            "[service:root]\nresource = a:B\npaths = /\n",
            "site.ini", "/srv",
        )
        table = RouteTable.from_config(site)
        self.assertEqual(table.route(b"/hi/there"), "hello")
        self.assertEqual(table.route(b"/hello"), "hello")
        self.assertEqual(table.route(b"/other"), "root")
        self.assertEqual(len(table), 3)

    def test_badPrefix(self) -> None:
        for prefix in ("hello", "/a?b", "/a//b", "/a/../b", "/café", "/a b"):
            self.assertRaises(ValueError, RouteTable, {prefix: "x"})

    def test_badService(self) -> None:
        self.assertRaises(ValueError, RouteTable, {"/a": ""})
        self.assertRaises(ValueError, RouteTable, {"/a": None})

    def test_twoSpellings(self) -> None:
        e = self.assertRaises(ValueError, RouteTable, {"/a": "x", "/a/": "y"})
        self.assertEqual(str(e), "route '/a/' is given twice")

    def test_repr(self) -> None:
        self.assertEqual(repr(RouteTable({"/b": "b", "/": "r", "/a/": "a"})),
                         "RouteTable({'/': 'r', '/a': 'a', '/b': 'b'})")
