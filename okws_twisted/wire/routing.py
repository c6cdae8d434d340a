# -*- test-case-name: tests.wire.test_routing -*-
"""Host and path routing (OKWS okd's service table, plus virtual hosts).

The dispatcher asks L{RouteTable.route} which service owns each request, and a service's
framer asks the same table whether the next request on its connection is its own, so both
decide with this one piece of code.  A lookup costs one dict probe per host label (wildcards
only) and one per path segment, never a scan of every route.

Hosts: a request's host is its C{Host} field, or the authority of an absolute-form target
(RFC 9112 section 3.2.2; the head parser has already refused a target whose authority differs
from C{Host}).  It is compared without its port and without one trailing dot, case-insensitively
(L{host_key}); percent-encoding is not decoded.  The host chooses a I{group} of routes; only then
does the path choose within it:

  1. the services that name the host exactly;
  2. else those of the longest C{*.suffix} pattern that matches (C{*.example.org} matches
     C{a.example.org} and C{a.b.example.org}, not C{example.org});
  3. else the services without C{hosts} (they serve every host nobody names);
  4. else, with C{default_host}, the group that host gets; else nothing (a 404).

There is no falling through: a path that the chosen group does not route is a 404, even if a
group further down routes it, because a service of another group must never see requests (and
cookies) meant for a host it does not serve.

Paths: matching is on raw request bytes, compared byte for byte: no percent-decoding, no case
folding, no dot-segment removal.  C{/a%2Fb} is one segment, and C{/Hello} is not C{/hello}.
Deciding that a target is malformed is the head parser's job, before routing.
"""

from __future__ import annotations

from collections.abc import Iterable

from okws_twisted.config import SiteConfig, host_pattern_matches, normalize_host, normalize_path

__all__ = ["ANY_HOST", "Route", "RouteTable", "host_key"]

#: The host pattern of services without C{hosts} (the metrics' C{host} label for them).
ANY_HOST = "*"


def host_key(host: bytes | None) -> bytes | None:
    """A request's host as routing compares it: lower case, without port or one final dot.

    C{host} is a value the head parser accepted (C{uri-host [":" port]}), or L{None} for an
    HTTP/1.0 request without one; L{None} comes back for that and for an empty name.
    """
    if not host:
        return None
    if host[:1] == b"[":
        name = host[: host.find(b"]") + 1]
    else:
        name = host.partition(b":")[0]
    if name[-1:] == b".":
        name = name[:-1]
    return name.lower() or None


class Route:
    """What routing found: the C{service}, and the C{hosts} pattern that chose its group (an
    exact name, C{*.suffix}, or L{ANY_HOST}): a label bounded by the config, never the
    client's own spelling, for the metrics."""

    __slots__ = ("service", "hosts")

    def __init__(self, service: str, hosts: str) -> None:
        self.service = service
        self.hosts = hosts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and (self.service, self.hosts) == (other.service, other.hosts)

    def __hash__(self) -> int:
        return hash((self.service, self.hosts))

    def __repr__(self) -> str:
        return f"Route({self.service!r}, {self.hosts!r})"


class _Paths:
    """One group's path prefixes; the longest matching prefix wins."""

    __slots__ = ("_routes", "_root", "_longest")

    def __init__(self, routes: dict[bytes, Route]) -> None:
        self._root = routes.pop(b"/", None)
        self._routes = routes
        # No prefix is longer than this, so longer candidates need no lookup: a path with
        # thousands of segments costs no more than one as long as the longest route.
        self._longest = max(map(len, routes), default=0)

    def route(self, path: bytes) -> Route | None:
        """Tries the whole path, then cuts it at each C{/} from the right."""
        routes = self._routes
        if len(path) > self._longest:
            # Only a prefix ending at a "/" within the first _longest + 1 bytes can match.
            end = path.rfind(b"/", 1, self._longest + 1)
            if end <= 0:
                return self._root
            path = path[:end]
        while True:
            found = routes.get(path)
            if found is not None:
                return found
            end = path.rfind(b"/")
            if end <= 0:
                return self._root
            path = path[:end]


class RouteTable:
    """Which service owns a request: by host (see the module docstring), then by path."""

    __slots__ = ("_exact", "_wild", "_wild_longest", "_any", "_default", "_spec")

    def __init__(self, routes: Iterable[tuple[str | None, str, str]], default_host: str | None = None) -> None:
        """
        @param routes: C{(hosts pattern or None, path prefix, service)} triples; C{None} is a
            service without C{hosts}.  Patterns follow the config's C{normalize_host}, prefixes
            its C{normalize_path}.
        @param default_host: the host whose group serves requests for hosts no group takes.
        @raise ValueError: a malformed pattern or prefix, an empty service name, one
            (host, prefix) given twice, or a C{default_host} that no group takes, or that could
            never be used because services without C{hosts} take every unnamed host.
        """
        groups: dict[str | None, dict[bytes, Route]] = {}
        routes_of: dict[tuple[str, str], Route] = {}
        spec = []
        for pattern, prefix, service in routes:
            if not isinstance(service, str) or not service:
                raise ValueError(f"route {prefix!r} needs a service name, got {service!r}")
            canonical_host = None if pattern is None else normalize_host(pattern)
            key = normalize_path(prefix).encode("ascii")
            group = groups.setdefault(canonical_host, {})
            if key in group:
                where = "" if canonical_host is None else f" on {canonical_host}"
                raise ValueError(f"route {prefix!r}{where} is given twice")
            label = ANY_HOST if canonical_host is None else canonical_host
            # One Route object per (group, service): routing allocates nothing.
            group[key] = routes_of.setdefault((label, service), Route(service, label))
            spec.append((canonical_host, normalize_path(prefix), service))
        self._spec = spec
        self._any = None if None not in groups else _Paths(groups.pop(None))
        self._exact: dict[bytes, _Paths] = {}
        self._wild: dict[bytes, _Paths] = {}  # b".example.org" for *.example.org
        for pattern, group in groups.items():
            assert pattern is not None
            if pattern.startswith("*."):
                self._wild[pattern[1:].encode("ascii")] = _Paths(group)
            else:
                self._exact[pattern.encode("ascii")] = _Paths(group)
        # No wildcard suffix is longer than this: a host of thousands of labels costs no
        # more probes than the longest suffix has labels.
        self._wild_longest = max(map(len, self._wild), default=0)
        self._default: _Paths | None = None
        if default_host is not None:
            name = normalize_host(default_host)
            if name.startswith("*."):
                raise ValueError(f"default_host {default_host!r} must be a host name, not a wildcard")
            if self._any is not None:
                raise ValueError(
                    f"default_host {default_host!r} would never be used: services without hosts "
                    "serve every host that no service names"
                )
            if not any(pattern is not None and host_pattern_matches(pattern, name) for pattern in groups):
                raise ValueError(f"default_host {default_host!r} is not served by any service's hosts")
            self._default = self._group(name.encode("ascii"))

    @classmethod
    def from_config(cls, site: SiteConfig) -> RouteTable:
        """The table for every service's C{hosts} and C{paths} (the config already refused clashes)."""
        routes = [
            (host, path, service.name)
            for service in site.services
            for host in (service.hosts or (None,))
            for path in service.paths
        ]
        return cls(routes, site.default_host)

    def _group(self, host: bytes | None) -> _Paths | None:
        if host is not None:
            found = self._exact.get(host)
            if found is not None:
                return found
            if self._wild:
                # The longest suffix first: ".b.example.org" before ".example.org"; at least
                # one byte of the host stays before the suffix, and an empty label is no label.
                dot = host.find(b".", max(1, len(host) - self._wild_longest))
                while dot > 0:
                    if host[dot - 1] != 0x2E:
                        found = self._wild.get(host[dot:])
                        if found is not None:
                            return found
                    dot = host.find(b".", dot + 1)
        if self._any is not None:
            return self._any
        return self._default

    def route(self, host: bytes | None, path: bytes) -> Route | None:
        """The route for a request's raw host (as the head gives it) and raw path (no query),
        or L{None} for a 404."""
        group = self._group(host_key(host))
        return None if group is None else group.route(path)

    def route_key(self, key: bytes | None, path: bytes) -> Route | None:
        """As L{route}, for a host already passed through L{host_key}."""
        group = self._group(key)
        return None if group is None else group.route(path)

    def __len__(self) -> int:
        return len(self._spec)

    def __repr__(self) -> str:
        return f"RouteTable({sorted(self._spec, key=lambda t: (t[0] or '', t[1]))!r})"
