# -*- test-case-name: tests.test_rendering -*-
"""
Rendering jinja2 templates as okws does (what OKWS's pub library did in each service).

One environment setup (L{make_environment}) for every process that renders:
the service processes (their pages) and the template publisher, pubd (the
site's error pages), so both escape the same way.  Autoescaping is on for
C{.html}, C{.htm} and C{.xml} templates and off for every other name.
Undefined variables follow jinja2's default: C{{{ missing }}} renders as
nothing and C{{% if missing %}} is false, but using one (C{missing.attr},
C{missing + 1}, iterating it) is an error.

jinja2 loaders are synchronous and a service's templates live in another
process, so L{TemplateRenderer} renders in two steps: first it makes sure
the template and every template it names statically (C{extends},
C{include}, C{import}, found by parsing it) is in the cache, fetching what
is not, without blocking; then it renders from the cache.  A name only
known at render time (C{{% include page %}}) makes jinja2's loader raise
C{TemplateNotFound}; the renderer fetches that name and renders again, a
bounded number of times.

Every failure reaches the caller as a L{TemplateFailure} naming the template
and line: a missing or refused template and a broken one answer 500, a
publisher that cannot be reached answers 503.
"""

from __future__ import annotations

# jinja2 imports these lazily (a string literal in a template, any template
# error); a service jailed after start-up could not, so import them now.
import encodings.unicode_escape  # noqa: F401
import importlib.resources
from types import TracebackType
from typing import Any, Callable, Mapping

import jinja2.debug  # noqa: F401
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    TemplateNotFound,
    TemplateSyntaxError,
    meta,
    select_autoescape,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from okws_twisted.errorpage import MESSAGE_MARKER, STATUSES, phrase
from okws_twisted.templatecache import TemplateCache
from okws_twisted.templatetree import Absent, NameRefused, Source, TemplateAbsent, TemplateTree, check_name

#: Names looked up at render time that a single render may fetch.
MAX_LOOKUPS = 16
#: Parsed reference lists kept (by name and version).
_MAX_REFS = 4096


class TemplateFailure(Exception):
    """A template could not be rendered: the client gets C{status}, the log the rest.

    @ivar template: the template the problem is in (or that was asked for).
    @ivar lineno: the line in C{template}, if known.
    @ivar cause: the original error with its traceback (through the
        template's lines), for the log.
    """

    status = 500

    def __init__(
        self, message: str, template: str | None = None, lineno: int | None = None, cause: Failure | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.template = template
        self.lineno = lineno
        self.cause = cause

    @property
    def where(self) -> str:
        """C{"hello.html line 3"}, for a log line."""
        if self.template is None:
            return "an unknown template"
        return self.template if self.lineno is None else f"{self.template} line {self.lineno}"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class TemplateMissing(TemplateFailure):
    """No template answers to a name (missing, or refused by the publisher)."""


class TemplateBroken(TemplateFailure):
    """A template has a syntax error, or failed while rendering."""


class PublisherUnavailable(TemplateFailure):
    """The publisher did not answer in time and no copy of the template is held."""

    status = 503

    def __init__(self, template: str, waited: float, retry_after: int) -> None:
        super().__init__(f"the template publisher did not answer within {waited:g}s", template)
        self.retry_after = retry_after


def make_environment(loader: BaseLoader) -> Environment:
    """The jinja2 environment okws renders with, over C{loader}."""
    return Environment(
        loader=loader,
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), default_for_string=True, default=False),
        auto_reload=True,
    )


def template_position(error: BaseException) -> tuple[str | None, int | None]:
    """The template and line an error raised by jinja2 points at.

    A syntax error says so itself; an error while rendering carries a
    traceback that jinja2 rewrote so the template's frames name the template
    and its line (the innermost such frame is the one that failed).
    """
    if isinstance(error, TemplateSyntaxError):
        return error.name or error.filename, error.lineno
    found: tuple[str | None, int | None] = (None, None)
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        frame_globals = tb.tb_frame.f_globals
        if "__jinja_exception__" in frame_globals:
            found = (frame_globals.get("__file__"), tb.tb_lineno)
        tb = tb.tb_next
    return found


def broken(error: BaseException, cause: Failure | None = None, fallback: str | None = None) -> TemplateBroken:
    """The L{TemplateBroken} for an error jinja2 raised."""
    template, lineno = template_position(error)
    message = error.message if isinstance(error, TemplateSyntaxError) and error.message else str(error)
    return TemplateBroken(f"{type(error).__name__}: {message}", template or fallback, lineno, cause)


class CacheLoader(BaseLoader):
    """jinja2's view of a L{TemplateCache}: what is held, never a fetch.

    A compiled template is up to date while the cache holds the same version
    of its text, so new text is compiled on its next use.
    """

    def __init__(self, cache: TemplateCache) -> None:
        self.cache = cache

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        held = self.cache.lookup(template)
        if held is None:
            raise TemplateNotFound(template)
        source, version = held
        cache = self.cache
        return source.text, template, lambda: cache.version(template) == version


class TreeLoader(BaseLoader):
    """jinja2's view of a L{TemplateTree}: the files themselves, read at each load."""

    def __init__(self, tree: TemplateTree) -> None:
        self.tree = tree

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        try:
            source = self.tree.read(template)
        except TemplateAbsent as e:
            raise TemplateNotFound(template, f"{template}: {e.reason}") from None
        return source.text, template, lambda: False


class MappingLoader(BaseLoader):
    """jinja2's view of a mapping from template name to source.

    Unlike jinja2's C{DictLoader} it gives each template its name as file
    name, so errors in it point at the template by name.
    """

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = dict(sources)

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        return self.sources[template], template, lambda: True


Fetch = Callable[[str], "Deferred[Source | Absent]"]


class TemplateRenderer:
    """Renders templates whose sources come from a fetch function, through a cache.

    @param fetch: asks for one template; fires with a L{Source} or an
        L{Absent}, or fails with L{PublisherUnavailable}.
    @param reachable: whether the fetch can get an answer now; while it
        cannot, a stale copy is used at once instead of waiting.
    """

    log = Logger()

    def __init__(self, cache: TemplateCache, fetch: Fetch, reachable: Callable[[], bool] = lambda: True) -> None:
        self.cache = cache
        self.environment = make_environment(CacheLoader(cache))
        self._fetch = fetch
        self._reachable = reachable
        self._inflight: dict[str, list[Deferred[None]]] = {}
        self._refs: dict[tuple[str, int], tuple[str, ...]] = {}

    def render(self, name: str, context: Mapping[str, Any]) -> Deferred[str]:
        """Render template C{name} with C{context}; fails with L{TemplateFailure}."""
        return Deferred.fromCoroutine(self._render(name, dict(context)))

    async def _render(self, name: str, context: dict[str, Any]) -> str:
        if not isinstance(name, str):
            raise TemplateMissing(f"a template name is a string, not {type(name).__name__}", repr(name))
        await self._prepare(name, set(), top=True)
        for _ in range(MAX_LOOKUPS):
            try:
                return self.environment.get_template(name).render(context)
            except TemplateNotFound as e:
                wanted = [n for n in e.templates if isinstance(n, str)]
                unknown = [n for n in wanted if self.cache.lookup(n) is None and self.cache.absence(n) is None]
                if not unknown:
                    raise self._not_found(e, wanted, name) from None
                for other in unknown:
                    await self._prepare(other, set())
            except Exception as e:
                raise broken(e, Failure(), name) from None
        raise TemplateBroken(f"more than {MAX_LOOKUPS} templates were named only at render time", name)

    def _not_found(self, error: TemplateNotFound, wanted: list[str], name: str) -> TemplateMissing:
        template, lineno = template_position(error)
        reasons = []
        for other in wanted:
            absence = self.cache.absence(other)
            why = absence.reason if absence is not None else "no such template"
            verb = "refused" if absence is not None and absence.refused else "not found"
            reasons.append(f"template {other!r} {verb}: {why}")
        return TemplateMissing("; ".join(reasons), template or name, lineno, Failure(error))

    async def _prepare(self, name: str, seen: set[str], top: bool = False) -> None:
        """Hold C{name} and what it names statically; absences are fatal only at the top."""
        if name in seen:
            return
        seen.add(name)
        await self._ensure(name)
        absence = self.cache.absence(name)
        if absence is not None:
            if top:
                verb = "refused" if absence.refused else "not found"
                raise TemplateMissing(f"template {verb}: {absence.reason}", name)
            return
        held = self.cache.lookup(name)
        if held is None:
            return
        for ref in self._references(name, *held):
            await self._prepare(ref, seen)

    async def _ensure(self, name: str) -> None:
        """Fetch C{name} unless the cache can answer for it."""
        if self.cache.settled(name):
            return
        try:
            check_name(name)
        except NameRefused as e:
            # Never worth asking the publisher: it would refuse it too.
            self.cache.store_absent(Absent(name, str(e), refused=True))
            return
        if self.cache.lookup(name) is not None and not self._reachable():
            return  # stale, and the publisher is away: use what is held
        try:
            await self._fetch_shared(name)
        except PublisherUnavailable:
            if self.cache.lookup(name) is None:
                raise
            self.log.warn("rendering a stale copy of {template}: the publisher did not answer", template=name)

    def _fetch_shared(self, name: str) -> Deferred[None]:
        """Wait for one fetch of C{name}, shared by every render that needs it."""
        waiters = self._inflight.get(name)
        first = waiters is None
        if waiters is None:
            waiters = self._inflight[name] = []

        def forget(d: Deferred[None]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiter: Deferred[None] = Deferred(forget)
        waiters.append(waiter)
        if first:
            self._fetch(name).addCallbacks(self._fetched, self._fetch_failed, callbackArgs=(name,), errbackArgs=(name,))
        return waiter

    def _fetched(self, result: Source | Absent, name: str) -> None:
        if isinstance(result, Source) and result.name == name:
            self.cache.store(result)
        elif isinstance(result, Absent):
            self.cache.store_absent(Absent(name, result.reason, result.refused))
        for waiter in self._inflight.pop(name, []):
            waiter.callback(None)

    def _fetch_failed(self, reason: Failure, name: str) -> None:
        for waiter in self._inflight.pop(name, []):
            waiter.errback(reason)

    def _references(self, name: str, source: Source, version: int) -> tuple[str, ...]:
        """The templates C{name} names statically (in this version of its text)."""
        key = (name, version)
        refs = self._refs.get(key)
        if refs is None:
            try:
                found = meta.find_referenced_templates(self.environment.parse(source.text, name, name))
                refs = tuple(ref for ref in found if isinstance(ref, str))
            except TemplateSyntaxError:
                refs = ()  # rendering it will report the error, with its line
            if len(self._refs) >= _MAX_REFS:
                self._refs.clear()
            self._refs[key] = refs
        return refs


# -- the site's error pages


def default_error_templates() -> dict[str, str]:
    """The error page templates shipped in the package, by template name."""
    folder = importlib.resources.files("okws_twisted").joinpath("templates", "errors")
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".html"):
            out[f"errors/{entry.name}"] = entry.read_text(encoding="utf-8")
    return out


def render_error_pages(
    site: BaseLoader | None, defaults: Mapping[str, str]
) -> tuple[dict[int, str], list[TemplateFailure]]:
    """Render C{errors/<status>.html} for every status okws answers itself.

    Each page comes from the site's templates (C{site}) where it has one,
    from C{defaults} otherwise; a site page that fails falls back to the
    default and its failure is returned for the log.  The context is
    C{status}, C{phrase} and C{message}, which is L{MESSAGE_MARKER}: the
    real message is put in per response.
    """
    fallback = make_environment(MappingLoader(defaults))
    loaders: list[BaseLoader] = [site] if site is not None else []
    env = make_environment(ChoiceLoader([*loaders, MappingLoader(defaults)]))
    pages: dict[int, str] = {}
    problems: list[TemplateFailure] = []
    for status in STATUSES:
        name = f"errors/{status}.html"
        context = {"status": status, "phrase": phrase(status), "message": MESSAGE_MARKER}
        try:
            pages[status] = env.get_template(name).render(context)
            continue
        except TemplateNotFound as e:
            where, lineno = template_position(e)
            problems.append(TemplateMissing(f"template {e.name!r} not found", where or name, lineno))
        except Exception as e:
            problems.append(broken(e, Failure(), name))
        try:
            pages[status] = fallback.get_template(name).render(context)
        except Exception as e:
            problems.append(broken(e, Failure(), name))
    return pages, problems
