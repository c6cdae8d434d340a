"""
Tests for L{okws_twisted.service.rendering}: the jinja2 setup, the renderer's fetch
and cache logic (over an in-memory stand-in for the publisher's answers;
the real publisher is exercised in tests.pubd.test_publisher and the e2e tests),
and the error pages.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.pubd.tree import etag_of
from okws_twisted.service.rendering import MAX_LOOKUPS, TemplateRenderer
from okws_twisted.service.templatecache import TemplateCache
from okws_twisted.templating import (
    MappingLoader,
    PublisherUnavailable,
    TemplateBroken,
    TemplateFailure,
    TemplateMissing,
    default_error_templates,
    make_environment,
    render_error_pages,
)
from okws_twisted.wire.errorpage import MESSAGE_MARKER, STATUSES
from okws_twisted.wire.templatechannel import Absent, Source


class Answers:
    """Answers fetches from a dict, at once or when told (C{hold}), and records them."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = dict(files)
        self.asked: list[str] = []
        self.hold = False
        self.held: list[tuple[str, Deferred[Source | Absent]]] = []
        self.down = False
        self.reachable = True

    def answer(self, name: str) -> Source | Absent:
        if name in self.files:
            return Source(name, self.files[name], etag_of(self.files[name].encode()))
        return Absent(name, "no such template")

    def fetch(self, name: str) -> Deferred[Source | Absent]:
        self.asked.append(name)
        if self.down:
            return fail(PublisherUnavailable(name, 1.0, 5))
        if self.hold:
            d: Deferred[Source | Absent] = Deferred()
            self.held.append((name, d))
            return d
        return succeed(self.answer(name))

    def release(self) -> None:
        held, self.held = self.held, []
        for name, d in held:
            d.callback(self.answer(name))


class RendererTestCase(SynchronousTestCase):
    files: dict[str, str] = {}

    def setUp(self) -> None:
        self.answers = Answers(self.files)
        self.cache = TemplateCache()
        self.renderer = TemplateRenderer(self.cache, self.answers.fetch, lambda: self.answers.reachable)

    def render(self, name: str, **context: object) -> str:
        return self.successResultOf(self.renderer.render(name, context))

    def failure(self, name: str, kind: type[TemplateFailure] = TemplateFailure, **context: object) -> TemplateFailure:
        error = self.failureResultOf(self.renderer.render(name, context), kind).value
        assert isinstance(error, TemplateFailure)
        return error


class EnvironmentTests(SynchronousTestCase):
    def render(self, name: str, source: str, **context: object) -> str:
        return make_environment(MappingLoader({name: source})).get_template(name).render(context)

    def test_autoescapeByExtension(self) -> None:
        for name, escaped in (("a.html", True), ("a.htm", True), ("a.xml", True), ("a.txt", False), ("a", False)):
            out = self.render(name, "{{ v }}", v="<b>&")
            self.assertEqual(out, "&lt;b&gt;&amp;" if escaped else "<b>&", name)

    def test_undefined(self) -> None:
        """A missing variable renders as nothing; using one is an error."""
        self.assertEqual(self.render("a.html", "[{{ nope }}]{% if nope %}x{% endif %}"), "[]")
        self.assertRaises(Exception, self.render, "a.html", "{{ nope.attr }}")


class FetchTests(RendererTestCase):
    files = {
        "page.html": '{% extends "base.html" %}{% import "m.html" as m %}{% block b %}{{ m.em(x) }}{% endblock %}',
        "base.html": '<main>{% block b %}{% endblock %}</main>{% include "foot.html" %}',
        "m.html": "{% macro em(v) %}<em>{{ v }}</em>{% endmacro %}",
        "foot.html": "<footer>{{ x }}</footer>",
        "dyn.html": "[{% include which %}]",
        "maybe.html": "{% if flag %}{% include 'gone.html' %}{% endif %}ok",
        "ignore.html": "{% include 'gone.html' ignore missing %}fine",
        "uses-gone.html": "line one\n{% include 'gone.html' %}",
        "up.html": "{% include '../secret.html' %}",
        "many.html": "{% for n in names %}{% include n %}{% endfor %}",
        "text.txt": "{{ x }}",
    }

    def test_extendsIncludeImport(self) -> None:
        out = self.render("page.html", x="<x>")
        self.assertEqual(out, "<main><em>&lt;x&gt;</em></main><footer>&lt;x&gt;</footer>")
        self.assertEqual(sorted(self.answers.asked), ["base.html", "foot.html", "m.html", "page.html"])

    def test_cachedAfterwards(self) -> None:
        self.render("page.html", x=1)
        self.answers.asked.clear()
        self.assertIn("<em>2</em>", self.render("page.html", x=2))
        self.assertEqual(self.answers.asked, [])

    def test_autoescapeFollowsTemplateName(self) -> None:
        self.assertEqual(self.render("text.txt", x="<b>"), "<b>")

    def test_dynamicInclude(self) -> None:
        self.assertEqual(self.render("dyn.html", which="foot.html", x="y"), "[<footer>y</footer>]")
        self.assertEqual(self.answers.asked, ["dyn.html", "foot.html"])

    def test_missingTop(self) -> None:
        error = self.failure("nope.html", TemplateMissing)
        self.assertEqual((error.template, error.lineno, error.status), ("nope.html", None, 500))
        self.assertIn("not found", error.message)

    def test_missingInclude(self) -> None:
        error = self.failure("uses-gone.html", TemplateMissing)
        self.assertEqual((error.template, error.lineno), ("uses-gone.html", 2))
        self.assertIn("'gone.html' not found", error.message)
        self.assertEqual(error.where, "uses-gone.html line 2")

    def test_missingDynamicInclude(self) -> None:
        error = self.failure("dyn.html", TemplateMissing, which="gone.html")
        self.assertEqual(error.template, "dyn.html")
        self.assertIn("gone.html", error.message)

    def test_missingOnlyInAnUntakenBranch(self) -> None:
        self.assertEqual(self.render("maybe.html", flag=False), "ok")
        self.failure("maybe.html", TemplateMissing, flag=True)

    def test_ignoreMissing(self) -> None:
        self.assertEqual(self.render("ignore.html"), "fine")

    def test_absenceRemembered(self) -> None:
        """A missing include costs one question, not one per request."""
        self.render("ignore.html")
        self.render("ignore.html")
        self.assertEqual(self.answers.asked.count("gone.html"), 1)

    def test_malformedNamesNeverAsked(self) -> None:
        error = self.failure("up.html", TemplateMissing)
        self.assertIn("refused", error.message)
        self.assertNotIn("../secret.html", self.answers.asked)
        self.failure("/etc/passwd", TemplateMissing)
        self.assertEqual(self.answers.asked, ["up.html"])

    def test_notAString(self) -> None:
        self.failure(b"page.html", TemplateMissing)  # type: ignore[arg-type]

    def test_boundedLookups(self) -> None:
        names = [f"n{i}.html" for i in range(MAX_LOOKUPS + 2)]
        self.answers.files.update({n: n for n in names})
        error = self.failure("many.html", TemplateBroken, names=names)
        self.assertIn("render time", error.message)
        self.assertEqual(self.render("many.html", names=names[:3]), "".join(names[:3]))


class BrokenTests(RendererTestCase):
    files = {
        "syntax.html": "one\ntwo\n{% if %}\n",
        "includes-syntax.html": "a\n{% include 'syntax.html' %}",
        "runtime.html": "a\nb\nc\n{{ 1 // zero }}",
        "nested.html": "x\n{% include 'runtime.html' %}",
        "attr.html": "\n{{ missing.attr }}",
    }

    def test_syntaxError(self) -> None:
        error = self.failure("syntax.html", TemplateBroken)
        self.assertEqual((error.template, error.lineno), ("syntax.html", 3))
        self.assertIn("TemplateSyntaxError", error.message)
        self.assertIsNotNone(error.cause)

    def test_syntaxErrorInInclude(self) -> None:
        error = self.failure("includes-syntax.html", TemplateBroken)
        self.assertEqual((error.template, error.lineno), ("syntax.html", 3))

    def test_runtimeError(self) -> None:
        error = self.failure("runtime.html", TemplateBroken, zero=0)
        self.assertEqual((error.template, error.lineno), ("runtime.html", 4))
        self.assertIn("ZeroDivisionError", error.message)

    def test_runtimeErrorInInclude(self) -> None:
        """The innermost template's line is the one reported."""
        error = self.failure("nested.html", TemplateBroken, zero=0)
        self.assertEqual((error.template, error.lineno), ("runtime.html", 4))

    def test_undefinedUsed(self) -> None:
        error = self.failure("attr.html", TemplateBroken)
        self.assertEqual((error.template, error.lineno), ("attr.html", 2))
        self.assertIn("UndefinedError", error.message)

    def test_fixedAfterChange(self) -> None:
        self.failure("syntax.html", TemplateBroken)
        self.answers.files["syntax.html"] = "fixed"
        self.cache.invalidate(["syntax.html"])
        self.assertEqual(self.render("syntax.html"), "fixed")


class ChangeTests(RendererTestCase):
    files = {"a.html": '{% extends "base.html" %}{% block b %}A1{% endblock %}', "base.html": "[{% block b %}{% endblock %}]"}

    def test_changeSeenOnNextRender(self) -> None:
        self.assertEqual(self.render("a.html"), "[A1]")
        self.answers.files["base.html"] = "({% block b %}{% endblock %})"
        self.assertEqual(self.render("a.html"), "[A1]")  # nobody said it changed
        self.cache.invalidate(["base.html"])
        self.assertEqual(self.render("a.html"), "(A1)")

    def test_unchangedTextNotRecompiled(self) -> None:
        self.render("a.html")
        compiled = self.renderer.environment.get_template("a.html")
        self.cache.invalidate(["a.html"])
        self.render("a.html")
        self.assertIs(self.renderer.environment.get_template("a.html"), compiled)

    def test_deleted(self) -> None:
        self.render("a.html")
        del self.answers.files["a.html"]
        self.cache.invalidate(["a.html"])
        self.failure("a.html", TemplateMissing)

    def test_created(self) -> None:
        self.failure("new.html", TemplateMissing)
        self.answers.files["new.html"] = "here"
        self.cache.invalidate(["new.html"])
        self.assertEqual(self.render("new.html"), "here")


class PublisherAwayTests(RendererTestCase):
    files = {"a.html": "A", "b.html": "B"}

    def test_neverHeld(self) -> None:
        self.answers.down = True
        error = self.failure("a.html", PublisherUnavailable)
        self.assertEqual((error.status, error.template), (503, "a.html"))
        self.assertEqual(error.retry_after, 5)  # type: ignore[attr-defined]

    def test_heldStillRenders(self) -> None:
        self.render("a.html")
        self.answers.down = True
        self.answers.reachable = False
        self.answers.asked.clear()
        self.assertEqual(self.render("a.html"), "A")
        self.assertEqual(self.answers.asked, [])

    def test_staleUsedAtOnceWhileUnreachable(self) -> None:
        self.render("a.html")
        self.cache.invalidate(["a.html"])
        self.answers.reachable = False
        self.answers.hold = True
        self.assertEqual(self.render("a.html"), "A")
        self.assertEqual(self.answers.held, [])

    def test_staleUsedWhenNoAnswer(self) -> None:
        self.render("a.html")
        self.cache.invalidate(["a.html"])
        self.answers.down = True
        with capturedLogs() as events:
            self.assertEqual(self.render("a.html"), "A")
        self.assertEqual([e.get("template") for e in events], ["a.html"])


class SharedFetchTests(RendererTestCase):
    files = {"a.html": "A{{ n }}"}

    def test_oneFetchForConcurrentRenders(self) -> None:
        self.answers.hold = True
        first = self.renderer.render("a.html", {"n": 1})
        second = self.renderer.render("a.html", {"n": 2})
        self.assertEqual(self.answers.asked, ["a.html"])
        self.assertNoResult(first)
        self.answers.release()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("A1", "A2"))

    def test_cancelOneWaiter(self) -> None:
        """A client that leaves cancels its render only."""
        self.answers.hold = True
        first = self.renderer.render("a.html", {"n": 1})
        second = self.renderer.render("a.html", {"n": 2})
        first.cancel()
        self.failureResultOf(first)
        self.answers.release()
        self.assertEqual(self.successResultOf(second), "A2")

    def test_failureReachesEveryWaiter(self) -> None:
        self.answers.hold = True
        first = self.renderer.render("a.html", {})
        second = self.renderer.render("a.html", {})
        [(_, held)] = self.answers.held
        held.errback(PublisherUnavailable("a.html", 1.0, 5))
        self.failureResultOf(first, PublisherUnavailable)
        self.failureResultOf(second, PublisherUnavailable)


class ErrorPageTests(SynchronousTestCase):
    def test_defaultsShipped(self) -> None:
        defaults = default_error_templates()
        for status in STATUSES:
            self.assertIn(f"errors/{status}.html", defaults)
        self.assertIn("errors/layout.html", defaults)

    def test_defaults(self) -> None:
        pages, problems = render_error_pages(None, default_error_templates())
        self.assertEqual(problems, [])
        self.assertEqual(sorted(pages), sorted(STATUSES))
        for status, page in pages.items():
            self.assertIn(MESSAGE_MARKER, page)
            self.assertIn(f"<title>{status} ", page)

    def test_siteOverride(self) -> None:
        site = MappingLoader({
            "errors/404.html": '{% extends "base.html" %}{% block c %}gone: {{ message }} ({{ status }} {{ phrase }}){% endblock %}',
            "base.html": "<main>{% block c %}{% endblock %}</main>",
        })
        pages, problems = render_error_pages(site, default_error_templates())
        self.assertEqual(problems, [])
        self.assertEqual(pages[404], f"<main>gone: {MESSAGE_MARKER} (404 Not Found)</main>")
        self.assertIn("500 Internal Server Error", pages[500])

    def test_siteLayoutOverride(self) -> None:
        """A site's errors/layout.html restyles every default page at once."""
        site = MappingLoader({"errors/layout.html": "SITE {{ status }}{% block detail %}{% endblock %}"})
        pages, _ = render_error_pages(site, default_error_templates())
        self.assertTrue(pages[503].startswith("SITE 503"))

    def test_brokenSitePageFallsBack(self) -> None:
        site = MappingLoader({"errors/500.html": "a\n{% if %}", "errors/404.html": "{% include 'nope.html' %}"})
        pages, problems = render_error_pages(site, default_error_templates())
        self.assertIn("500 Internal Server Error", pages[500])
        self.assertIn("404 Not Found", pages[404])
        where = sorted(p.where for p in problems)
        self.assertEqual(where, ["errors/404.html line 1", "errors/500.html line 2"])
