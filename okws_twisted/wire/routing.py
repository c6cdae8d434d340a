# -*- test-case-name: tests.wire.test_routing -*-
"""Path routing (OKWS okd's service table).

The dispatcher asks L{RouteTable.route} which service owns each request, on its per-request
hot path, so a lookup costs one dict probe per path segment rather than a scan of every route.

Matching is on raw request bytes, compared byte for byte: no percent-decoding, no case folding,
no dot-segment removal.  C{/a%2Fb} is one segment, and C{/Hello} is not C{/hello}.  Deciding
that a target is malformed is the head parser's job, before routing.
"""

from __future__ import annotations

from collections.abc import Mapping

from okws_twisted.config import SiteConfig, normalize_path

__all__ = ["RouteTable"]


class RouteTable:
    """Path prefixes mapped to service names; the longest matching prefix wins.

    A prefix matches itself and everything below it at a C{/} boundary: C{/hello} matches
    C{/hello}, C{/hello/} and C{/hello/x} but not C{/helloworld}.  A C{/} route catches every
    path no other prefix matches.
    """

    __slots__ = ("_routes", "_root", "_longest")

    def __init__(self, routes: Mapping[str, str]) -> None:
        """
        @param routes: path prefix -> service name.  Prefixes follow the config's rules
            (L{normalize_path}); C{/a/} and C{/a} are the same prefix.
        @raise ValueError: for a malformed prefix, an empty service name, or one prefix given
            twice in two spellings.
        """
        table: dict[bytes, str] = {}
        for prefix, service in routes.items():
            canonical = normalize_path(prefix)
            if not isinstance(service, str) or not service:
                raise ValueError(f"route {prefix!r} needs a service name, got {service!r}")
            key = canonical.encode("ascii")
            if key in table:
                raise ValueError(f"route {prefix!r} is given twice")
            table[key] = service
        self._root: str | None = table.pop(b"/", None)
        self._routes = table
        # No prefix is longer than this, so longer candidates need no lookup: a path with
        # thousands of segments costs no more than one as long as the longest route.
        self._longest = max(map(len, table), default=0)

    @classmethod
    def from_config(cls, site: SiteConfig) -> RouteTable:
        """The table for every service's C{paths} (the config already refused clashes)."""
        return cls({path: service.name for service in site.services for path in service.paths})

    def route(self, path: bytes) -> str | None:
        """The service for a raw request path (no query), or L{None} for a 404.

        Tries the whole path, then cuts it at each C{/} from the right: at most one dict
        lookup per segment, none for segments deeper than the longest route.
        """
        routes = self._routes
        if len(path) > self._longest:
            # Only a prefix ending at a "/" within the first _longest + 1 bytes can match.
            end = path.rfind(b"/", 1, self._longest + 1)
            if end <= 0:
                return self._root
            path = path[:end]
        while True:
            service = routes.get(path)
            if service is not None:
                return service
            end = path.rfind(b"/")
            if end <= 0:
                return self._root
            path = path[:end]

    def __len__(self) -> int:
        return len(self._routes) + (self._root is not None)

    def __repr__(self) -> str:
        routes = {prefix.decode("ascii"): service for prefix, service in self._routes.items()}
        if self._root is not None:
            routes["/"] = self._root
        return f"RouteTable({dict(sorted(routes.items()))!r})"
