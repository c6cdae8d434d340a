# -*- test-case-name: tests.service.test_rendering -*-
"""
Rendering a service's templates (what OKWS's pub library did in each service).

jinja2 loaders are synchronous and a service's templates live in another
process, so L{TemplateRenderer} renders in two steps: first it makes sure
the template and every template it names statically (C{extends},
C{include}, C{import}, found by parsing it) is in the cache, fetching what
is not, without blocking; then it renders from the cache.  A name only
known at render time (C{{% include page %}}) makes jinja2's loader raise
C{TemplateNotFound}; the renderer fetches that name and renders again, a
bounded number of times.

The environment itself (escaping, undefined variables, the failures) is
L{okws_twisted.templating}'s, shared with the template publisher.  Every
failure reaches the caller as a L{okws_twisted.templating.TemplateFailure}
naming the template and line: a missing or refused template and a broken one
answer 500, a publisher that cannot be reached answers 503.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from jinja2 import BaseLoader, Environment, TemplateNotFound, TemplateSyntaxError, meta
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from okws_twisted.service.templatecache import TemplateCache
from okws_twisted.templating import (
    PublisherUnavailable,
    TemplateBroken,
    TemplateMissing,
    broken,
    make_environment,
    template_position,
)
from okws_twisted.wire.templatechannel import Absent, NameRefused, Source, check_name

#: Names looked up at render time that a single render may fetch.
MAX_LOOKUPS = 16
#: Parsed reference lists kept (by name and version).
_MAX_REFS = 4096


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
