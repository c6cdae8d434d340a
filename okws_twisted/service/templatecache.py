# -*- test-case-name: tests.service.test_templatecache -*-
"""
What a service process knows about templates (its copy of what OKWS's pubd published).

A service has no access to the template files; it keeps what the publisher
sent it.  For each name the cache holds one of:

  - a source, I{fresh} (the last word the publisher said about it) or
    I{stale} (the publisher said it changed, or the channel to the
    publisher was replaced, since it arrived): a stale source is fetched
    again before use, and used as it is only while the publisher is away;
  - an I{absence} (the publisher said C{missing} or C{refused}), remembered
    until the name changes, so a missing include does not cost a round trip
    per request;
  - nothing.

Every stored change of text gets a new version number: the jinja2 loader
reports a compiled template up to date only while its version is current,
so new text is compiled on its next use and old text never is again.

Pure logic: no I/O and no jinja2.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from okws_twisted.wire.templatechannel import Absent, Source

#: Absences remembered at most (names can come from request data through a
#: dynamic include; the oldest are forgotten first).
MAX_ABSENT = 1024


@dataclass
class _Entry:
    source: Source
    version: int
    fresh: bool = True


class TemplateCache:
    """Template sources and absences by name, with freshness and versions."""

    def __init__(self, max_absent: int = MAX_ABSENT) -> None:
        self._entries: dict[str, _Entry] = {}
        self._absent: OrderedDict[str, Absent] = OrderedDict()
        self._max_absent = max_absent
        self._versions = itertools.count(1)

    def lookup(self, name: str) -> tuple[Source, int] | None:
        """The source held for C{name} (fresh or stale) and its version."""
        entry = self._entries.get(name)
        return None if entry is None else (entry.source, entry.version)

    def version(self, name: str) -> int | None:
        """The current version of C{name}'s text, L{None} if none is held."""
        entry = self._entries.get(name)
        return None if entry is None else entry.version

    def absence(self, name: str) -> Absent | None:
        """The publisher's word that C{name} is missing or refused, if still valid."""
        return self._absent.get(name)

    def settled(self, name: str) -> bool:
        """True if C{name} needs no fetch: a fresh source or a known absence."""
        entry = self._entries.get(name)
        return (entry is not None and entry.fresh) or name in self._absent

    def store(self, found: Source) -> bool:
        """Keep C{found} as the fresh source of its name; True if its text is new."""
        name = found.name
        self._absent.pop(name, None)
        entry = self._entries.get(name)
        if entry is not None and entry.source.etag == found.etag:
            entry.fresh = True
            return False
        self._entries[name] = _Entry(found, next(self._versions))
        return True

    def store_absent(self, answer: Absent) -> None:
        """Remember that no template answers to C{answer.name}."""
        self._entries.pop(answer.name, None)
        self._absent.pop(answer.name, None)
        self._absent[answer.name] = answer
        while len(self._absent) > self._max_absent:
            self._absent.popitem(last=False)

    def invalidate(self, names: list[str]) -> int:
        """The publisher says C{names} changed: their sources go stale, their
        absences are forgotten.  Returns how many held names were affected."""
        touched = 0
        for name in names:
            entry = self._entries.get(name)
            if entry is not None and entry.fresh:
                entry.fresh = False
                touched += 1
            if self._absent.pop(name, None) is not None:
                touched += 1
        return touched

    def invalidate_all(self) -> None:
        """Anything may have changed (a new publisher): every source goes stale,
        every absence is forgotten."""
        for entry in self._entries.values():
            entry.fresh = False
        self._absent.clear()

    def names(self) -> list[str]:
        """The names a source is held for."""
        return list(self._entries)
