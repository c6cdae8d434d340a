"""Tests for L{okws_twisted.static.files} (pure decisions) and L{okws_twisted.static.beneath} (opening)."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.static import beneath
from okws_twisted.static.files import (
    Part,
    Unsatisfiable,
    Whole,
    accepted_codings,
    byte_range,
    compressible,
    content_type,
    etag,
    http_date,
    precondition,
    relative_path,
)


class PathTests(SynchronousTestCase):
    def test_refused(self) -> None:
        """Dot segments (also %2e%2e, which arrives decoded), dotfiles, an encoded '/', NUL, '\\', '//'."""
        for segments in ([], [b""], [b"a", b""], [b".."], [b"."], [b".env"], [b"a", b".git", b"config"],
                         [b"a/b"], [b"..%2f"], [b"a\x00"], [b"..\\x"], [b"a", b"", b"b"]):
            self.assertIsNone(relative_path(segments), segments)

    def test_accepted(self) -> None:
        self.assertEqual(relative_path([b"css", b"app.css"]), b"css/app.css")
        self.assertEqual(relative_path([b"favicon.ico"]), b"favicon.ico")
        self.assertEqual(relative_path([b"a..b"]), b"a..b")


class TypeTests(SynchronousTestCase):
    def test_types(self) -> None:
        for name, expected in (
            (b"app.css", b"text/css; charset=utf-8"),
            (b"index.html", b"text/html; charset=utf-8"),
            (b"app.js", b"text/javascript; charset=utf-8"),
            (b"i.svg", b"image/svg+xml; charset=utf-8"),
            (b"data.json", b"application/json; charset=utf-8"),
            (b"site.webmanifest", b"application/manifest+json; charset=utf-8"),
            (b"robots.txt", b"text/plain; charset=utf-8"),
            (b"f.woff2", b"font/woff2"),
            (b"x.PNG", b"image/png"),
            (b"p.webp", b"image/webp"),
            (b"favicon.ico", b"image/x-icon"),
            (b"README", b"application/octet-stream"),
            (b"a.tar.gz", b"application/gzip"),  # a download stays what it is: no Content-Encoding
            (b"app.css.br", b"application/x-brotli"),
        ):
            self.assertEqual(content_type(name), expected, name)

    def test_no_system_table(self) -> None:
        """The table is ours, never /etc/mime.types: a jail has none, and the answer must not
        depend on where the server runs.  (.flac is in Debian's mime.types, not in Python's.)"""
        self.assertEqual(content_type(b"a.flac"), b"application/octet-stream")

    def test_compressible(self) -> None:
        self.assertTrue(compressible(b"text/css; charset=utf-8"))
        self.assertTrue(compressible(b"image/svg+xml; charset=utf-8"))
        self.assertFalse(compressible(b"image/png"))
        self.assertFalse(compressible(b"application/gzip"))


class ConditionTests(SynchronousTestCase):
    tag = b'"1-2"'
    mtime = 1_700_000_000

    def check(self, method: bytes = b"GET", **headers: bytes) -> int | None:
        return precondition(method, {k.replace("_", "-").encode(): v for k, v in headers.items()}, self.tag, self.mtime)

    def test_none_match(self) -> None:
        self.assertEqual(self.check(if_none_match=b'"x", "1-2"'), 304)
        self.assertEqual(self.check(if_none_match=b'W/"1-2"'), 304)  # weak comparison
        self.assertEqual(self.check(if_none_match=b"*"), 304)
        self.assertEqual(self.check(b"HEAD", if_none_match=b"*"), 304)
        self.assertIsNone(self.check(if_none_match=b'"x"'))
        # If-None-Match decides; If-Modified-Since is then ignored.
        self.assertIsNone(self.check(if_none_match=b'"x"', if_modified_since=http_date(self.mtime)))

    def test_modified_since(self) -> None:
        self.assertEqual(self.check(if_modified_since=http_date(self.mtime)), 304)
        self.assertEqual(self.check(if_modified_since=http_date(self.mtime + 60)), 304)
        self.assertIsNone(self.check(if_modified_since=http_date(self.mtime - 1)))
        self.assertIsNone(self.check(if_modified_since=b"garbage"))
        self.assertIsNone(self.check(if_modified_since=b"Sun, 06 Nov 1994 08:49:37"))  # no zone

    def test_match(self) -> None:
        self.assertEqual(self.check(if_match=b'"x"'), 412)
        self.assertEqual(self.check(if_match=b'W/"1-2"'), 412)  # strong comparison
        self.assertIsNone(self.check(if_match=b'"1-2"'))
        self.assertIsNone(self.check(if_match=b"*"))
        self.assertEqual(self.check(if_unmodified_since=http_date(self.mtime - 5)), 412)
        self.assertIsNone(self.check(if_unmodified_since=http_date(self.mtime)))

    def test_etag(self) -> None:
        self.assertEqual(etag(0x10, 0x20), b'"10-20"')
        self.assertEqual(etag(0x10, 0x20, b"br"), b'"10-20-br"')


class RangeTests(SynchronousTestCase):
    def r(self, value: bytes, size: int = 1000, if_range: bytes | None = None) -> object:
        return byte_range(value, size, if_range, b'"t"', 5)

    def test_single(self) -> None:
        self.assertEqual(self.r(b"bytes=0-99"), Part(0, 99))
        self.assertEqual(self.r(b"bytes=900-"), Part(900, 999))
        self.assertEqual(self.r(b"bytes=-100"), Part(900, 999))
        self.assertEqual(self.r(b"bytes=-5000"), Part(0, 999))
        self.assertEqual(self.r(b"bytes=990-5000"), Part(990, 999))
        self.assertEqual(self.r(b"Bytes=1-1"), Part(1, 1))
        self.assertEqual(Part(0, 99).length, 100)

    def test_unsatisfiable(self) -> None:
        self.assertEqual(self.r(b"bytes=1000-"), Unsatisfiable())
        self.assertEqual(self.r(b"bytes=-0"), Unsatisfiable())
        self.assertEqual(self.r(b"bytes=0-", size=0), Unsatisfiable())

    def test_ignored(self) -> None:
        """Malformed or foreign units are ignored; several ranges get the whole file (documented)."""
        self.assertEqual(self.r(None), Whole())  # type: ignore[arg-type]
        for value in (b"bytes=5-1", b"items=0-1", b"bytes=abc", b"bytes=-", b"bytes=0-1,5-6", b"bytes=1-2,",
                      b"bytes=\xd9\xa1-2", b"bytes=" + b"9" * 30 + b"-", b"bytes 0-1"):
            self.assertEqual(self.r(value), Whole(), value)

    def test_if_range(self) -> None:
        self.assertEqual(self.r(b"bytes=0-1", if_range=b'"t"'), Part(0, 1))
        self.assertEqual(self.r(b"bytes=0-1", if_range=b'"u"'), Whole())
        self.assertEqual(self.r(b"bytes=0-1", if_range=b'W/"t"'), Whole())
        self.assertEqual(self.r(b"bytes=0-1", if_range=http_date(5)), Part(0, 1))
        self.assertEqual(self.r(b"bytes=0-1", if_range=http_date(6)), Whole())
        self.assertEqual(self.r(b"bytes=0-1", if_range=b"nonsense"), Whole())


class CodingTests(SynchronousTestCase):
    def test_choice(self) -> None:
        def names(header: bytes | None) -> list[bytes]:
            return [coding for coding, _suffix in accepted_codings(header)]

        self.assertEqual(names(None), [])
        self.assertEqual(names(b"gzip, deflate, br, zstd"), [b"br", b"gzip"])  # Chromium's
        self.assertEqual(names(b"gzip;q=1, br;q=0.5"), [b"gzip", b"br"])
        self.assertEqual(names(b"br;q=0, gzip"), [b"gzip"])
        self.assertEqual(names(b"*"), [b"br", b"gzip"])
        self.assertEqual(names(b"*;q=0, identity"), [])
        self.assertEqual(names(b"identity"), [])
        self.assertEqual(names(b"GZIP;Q=0.8"), [b"gzip"])
        self.assertEqual(names(b"gzip;q=2"), [])
        self.assertEqual(names(b"gzip;q=x"), [])
        self.assertEqual(names(b"x-gzip"), [b"gzip"])
        self.assertEqual(accepted_codings(b"gzip"), ((b"gzip", b".gz"),))


class BeneathTests(SynchronousTestCase):
    """Only a regular file beneath the root opens; every way out fails at once."""

    def setUp(self) -> None:
        self.top = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.top)
        self.root = os.path.join(self.top, "root")
        os.makedirs(os.path.join(self.root, "sub"))
        with open(os.path.join(self.top, "secret"), "w") as f:
            f.write("secret")
        with open(os.path.join(self.root, "sub", "a.txt"), "w") as f:
            f.write("a")
        os.symlink("../secret", os.path.join(self.root, "out"))
        os.symlink(os.path.join(self.top, "secret"), os.path.join(self.root, "abs"))
        os.symlink("/dev/urandom", os.path.join(self.root, "dev"))
        os.symlink("sub/a.txt", os.path.join(self.root, "in"))
        os.symlink("../root/sub", os.path.join(self.root, "loop"))
        os.mkfifo(os.path.join(self.root, "fifo"))
        self.dirfd = beneath.open_root(self.root)
        self.addCleanup(os.close, self.dirfd)

    def opened(self, rel: bytes) -> bool:
        got = beneath.open_beneath(self.dirfd, rel)
        if got is None:
            return False
        os.close(got[0])
        return True

    def test_inside(self) -> None:
        self.assertTrue(self.opened(b"sub/a.txt"))
        self.assertTrue(self.opened(b"in"))  # a link that stays beneath the root

    def test_refused(self) -> None:
        # The FIFO returns at once (O_NONBLOCK), and is refused: only regular files are served.
        for rel in (b"out", b"abs", b"dev", b"fifo", b"sub", b"nope", b"sub/../../secret", b"loop/a.txt", b"/etc/passwd"):
            self.assertFalse(self.opened(rel), rel)

    def test_walk_fallback(self) -> None:
        """Without openat2, the component walk refuses every symlink, even one that stays inside."""
        self.patch(beneath, "_has_openat2", False)
        self.assertTrue(self.opened(b"sub/a.txt"))
        for rel in (b"in", b"out", b"abs", b"dev", b"fifo", b"sub", b"loop/a.txt"):
            self.assertFalse(self.opened(rel), rel)

    def test_out_of_descriptors(self) -> None:
        """EMFILE is not a missing file: the resource answers 503, not 404."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        held = []
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            try:
                while True:
                    held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            self.assertRaises(beneath.Exhausted, beneath.open_beneath, self.dirfd, b"sub/a.txt")
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
