"""
Tests for L{okws_twisted.pubd.tree}: which names exist, and reading them
from a real directory without ever leaving it.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.pubd.tree import TemplateTree, etag_of
from okws_twisted.wire.templatechannel import (
    MAX_NAME,
    MAX_TEMPLATE_BYTES,
    Absent,
    NameRefused,
    TemplateAbsent,
    check_name,
)


class CheckNameTests(SynchronousTestCase):
    """The pure rule for template names."""

    def test_accepted(self) -> None:
        for name in ("a.html", "errors/404.html", "a/b/c.txt", "under_score-dash.x", "caf\u00e9.html", "a..b"):
            self.assertEqual(check_name(name), name)

    def test_refused(self) -> None:
        cases = {
            "": "empty",
            "/etc/passwd": "absolute",
            "../secret": "'..'",
            "a/../../b": "'..'",
            "a/./b": "'.'",
            ".": "'.'",
            "a//b": "empty segment",
            "a/": "empty segment",
            "a\\b": "backslash",
            "a\x00b": "control",
            "a\nb": "control",
            ".git/config": "hidden",
            "a/.b.swp": "hidden",
            "x" * (MAX_NAME + 1): "longer",
        }
        for name, why in cases.items():
            e = self.assertRaises(NameRefused, check_name, name)
            self.assertIn(why, str(e), name)

    def test_notAString(self) -> None:
        for name in (b"a.html", None, 3, ["a"]):
            self.assertRaises(NameRefused, check_name, name)


class TreeTests(SynchronousTestCase):
    """Reading templates by name from a real directory."""

    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(base)
        self.base = os.path.realpath(base)
        self.root = os.path.join(self.base, "templates")
        os.makedirs(os.path.join(self.root, "errors"))
        self.write("a.html", "<p>{{ x }}</p>")
        self.write("errors/404.html", "nope")
        with open(os.path.join(self.base, "secret.html"), "w") as f:
            f.write("SECRET")
        self.tree = TemplateTree(self.root)

    def write(self, name: str, text: str | bytes) -> None:
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)

    def absent(self, name: object) -> TemplateAbsent:
        return self.assertRaises(TemplateAbsent, self.tree.read, name)

    def test_read(self) -> None:
        source = self.tree.read("a.html")
        self.assertEqual((source.name, source.text), ("a.html", "<p>{{ x }}</p>"))
        self.assertEqual(source.etag, etag_of(b"<p>{{ x }}</p>"))
        self.assertEqual(self.tree.read("errors/404.html").text, "nope")

    def test_etagFollowsContent(self) -> None:
        first = self.tree.read("a.html").etag
        self.assertEqual(self.tree.read("a.html").etag, first)
        self.write("a.html", "changed")
        self.assertNotEqual(self.tree.read("a.html").etag, first)

    def test_missing(self) -> None:
        e = self.absent("nope.html")
        self.assertFalse(e.refused)
        self.assertEqual(e.answer(), Absent("nope.html", "no such template", False))

    def test_directory(self) -> None:
        e = self.absent("errors")
        self.assertFalse(e.refused)
        self.assertIn("directory", e.reason)

    def test_fileAsDirectory(self) -> None:
        self.assertTrue(self.absent("a.html/b.html").refused)

    def test_malformedNamesRefused(self) -> None:
        for name in ("../secret.html", "/etc/passwd", self.base + "/secret.html", "errors/../../secret.html", "a\\b"):
            e = self.absent(name)
            self.assertTrue(e.refused, name)
        self.assertTrue(self.absent(b"a.html").refused)

    def test_symlinkInsideAllowed(self) -> None:
        os.symlink("errors/404.html", os.path.join(self.root, "alias.html"))
        os.symlink("errors", os.path.join(self.root, "more"))
        self.assertEqual(self.tree.read("alias.html").text, "nope")
        self.assertEqual(self.tree.read("more/404.html").text, "nope")

    def test_symlinkOutRefused(self) -> None:
        os.symlink(os.path.join(self.base, "secret.html"), os.path.join(self.root, "out.html"))
        os.symlink("../secret.html", os.path.join(self.root, "rel.html"))
        os.symlink(self.base, os.path.join(self.root, "up"))
        for name in ("out.html", "rel.html", "up/secret.html"):
            e = self.absent(name)
            self.assertTrue(e.refused, name)
            self.assertIn("outside", e.reason)

    def test_symlinkToRootItself(self) -> None:
        """A link to the root is no way into anything outside it."""
        os.symlink(".", os.path.join(self.root, "self"))
        self.assertEqual(self.tree.read("self/a.html").text, "<p>{{ x }}</p>")
        self.assertTrue(self.absent("self").name == "self")

    def test_linkLoop(self) -> None:
        os.symlink("loop.html", os.path.join(self.root, "loop.html"))
        self.assertTrue(self.absent("loop.html").refused)

    def test_rootIsALink(self) -> None:
        """The site's template directory may itself be a link (a deploy swaps it)."""
        link = os.path.join(self.base, "current")
        os.symlink(self.root, link)
        self.assertEqual(TemplateTree(link).read("a.html").text, "<p>{{ x }}</p>")
        os.symlink(os.path.join(self.base, "secret.html"), os.path.join(self.root, "out.html"))
        self.assertTrue(self.assertRaises(TemplateAbsent, TemplateTree(link).read, "out.html").refused)

    def test_notUtf8(self) -> None:
        self.write("latin.html", b"caf\xe9")
        e = self.absent("latin.html")
        self.assertTrue(e.refused)
        self.assertIn("UTF-8", e.reason)

    def test_tooLarge(self) -> None:
        with open(os.path.join(self.root, "big.html"), "wb") as f:
            f.truncate(MAX_TEMPLATE_BYTES + 1)
        e = self.absent("big.html")
        self.assertIn("larger", e.reason)

    def test_notARegularFile(self) -> None:
        os.mkfifo(os.path.join(self.root, "pipe.html"))
        e = self.absent("pipe.html")
        self.assertTrue(e.refused)
        self.assertIn("regular", e.reason)

    def test_noRoot(self) -> None:
        tree = TemplateTree(os.path.join(self.base, "nothing"))
        self.assertIsNone(tree.real_root())
        e = self.assertRaises(TemplateAbsent, tree.read, "a.html")
        self.assertIn("does not exist", e.reason)
