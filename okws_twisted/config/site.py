# -*- test-case-name: tests.test_config -*-
"""The site's values (OKWS's okws_config): what every process is told at start-up.

The launcher calls L{load} on the operator's ini file before it spawns anything, so every
mistake stops start-up with one line naming the file, the section and the key.  Children never
re-read the ini file: the launcher hands each one the validated L{SiteConfig} as JSON
(L{SiteConfig.to_json} / L{SiteConfig.from_json}).

The values are frozen dataclasses that validate themselves at construction, so a bad value
cannot travel from one process to another.  Pure logic: stdlib only, no I/O except in L{load}.
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import os
import re
from dataclasses import dataclass, field
from typing import Any

from okws_twisted.config.databases import DB_PREFIX, DatabaseConfig
from okws_twisted.config.errors import ConfigError, _FieldError
from okws_twisted.config.numbers import _SECONDS_OR_ZERO, _SECONDS_POSITIVE, _Number
from okws_twisted.config.listeners import (
    DEFAULT_LISTEN,
    DEFAULT_PROXY_TRUSTED,
    WILDCARD,
    Listener,
    parse_listener,
    trusted_networks,
)

__all__ = [
    "ACCESS_FIELDS",
    "COMBINED",
    "ISOLATIONS",
    "ServiceConfig",
    "SiteConfig",
    "host_pattern_matches",
    "normalize_host",
    "normalize_path",
    "parse_access_fields",
]

#: The version of the JSON document L{SiteConfig.to_json} writes.
_JSON_FORMAT = 1

_SERVICE_PREFIX = "service:"
_STATIC_PREFIX = "static:"
#: The resource every C{[static:NAME]} pool serves (built in, loaded by name like a site's).
STATIC_RESOURCE = "okws_twisted.static.resource:StaticFiles"
#: The kinds of pool a section makes: C{[service:NAME]} and C{[static:NAME]}.
KINDS = ("service", "static")
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

# ---------------------------------------------------------------------------------------------
# Numbers (how each is written and checked: L{okws_twisted.config.numbers})

#: Every numeric [okws] key, in the order of the docs.
_OKWS_NUMBERS: dict[str, _Number] = {
    "max_head": _Number(int, 1, "bytes"),
    "max_request_line": _Number(int, 1, "bytes"),
    "max_headers": _Number(int, 1, "headers"),
    "head_timeout": _SECONDS_POSITIVE,
    "queue_max": _Number(int, 0, "connections"),
    "queue_timeout": _SECONDS_POSITIVE,
    "retry_after": _Number(int, 1, "seconds"),
    "restart_delay_min": _SECONDS_POSITIVE,
    "restart_delay_max": _SECONDS_POSITIVE,
    "stable_after": _SECONDS_POSITIVE,
    "drain_timeout": _SECONDS_OR_ZERO,
    "kill_timeout": _SECONDS_OR_ZERO,
    "keepalive_timeout": _SECONDS_POSITIVE,
    "body_timeout": _SECONDS_POSITIVE,
    "body_min_rate": _Number(int, 0, "bytes per second"),
    "max_requests_per_connection": _Number(int, 1, "requests"),
    "max_connections": _Number(int, 1, "connections"),
    "resume_connections": _Number(int, 0, "connections"),
    "crash_budget": _Number(int, 0, "crashes"),
    "crash_window": _SECONDS_POSITIVE,
    "heartbeat_interval": _SECONDS_POSITIVE,
    "heartbeat_timeout": _SECONDS_POSITIVE,
    "dispatcher_uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "logd_uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "logd_nice": _Number(int, 0, "nice levels", maximum=19),
    "pubd_uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "template_timeout": _SECONDS_POSITIVE,
    "log_buffer": _Number(int, 1, "records"),
    "log_max_size": _Number(int, 0, "bytes"),
    "log_keep": _Number(int, 1, "files", maximum=1000),
    "tls_handshake_timeout": _SECONDS_POSITIVE,
}

#: The yes/no [okws] keys.
_OKWS_BOOLEANS = ("access_log", "access_log_json", "cgroups")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")

_SERVICE_NUMBERS: dict[str, _Number] = {
    "instances": _Number(int, 1, "instances", maximum=64),
    "max_body": _Number(int, 0, "bytes"),
    "max_connections": _Number(int, 1, "connections"),
    "restart_after_requests": _Number(int, 0, "requests"),
    "restart_after_seconds": _SECONDS_OR_ZERO,
    "uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "gid": _Number(int, 0, "gid", maximum=2**31 - 2),
    # Below 64 MiB Python and Twisted alone do not fit.
    "memory_limit": _Number(int, 64 << 20, "bytes"),
    # Threads count: an instance's own thread pool takes up to 10.
    "max_processes": _Number(int, 16, "processes and threads"),
}

_OKWS_KEYS = (
    "listen", "log_dir", "templates", "state_dir", "control_socket", "admin", "jail_root", "uid_range",
    "proxy_trusted", *_OKWS_NUMBERS, *_OKWS_BOOLEANS, "access_log_fields", "server_header", "health",
    "default_host", "isolation",
)
_SERVICE_BOOLEANS = ("scratch", "lazy", "fork")
_SERVICE_KEYS = (
    "resource", "paths", "hosts", "isolation", "network", *_SERVICE_BOOLEANS, "db", "queries", *_SERVICE_NUMBERS,
)
#: The values of C{isolation}: C{connection} hands the client's socket to the service (it may
#: see later requests on that connection); C{request} keeps it in the dispatcher, which relays
#: each request to the service and its response back.
ISOLATIONS = ("connection", "request")
_NETWORK_CHOICES = ("none", "host")
#: [okws] health: what /health calls healthy (docs/operations.md).
HEALTH_CHOICES = ("all", "any")
#: The default of [okws] server_header: the software, never its version.
DEFAULT_SERVER_HEADER = "okws-twisted"
#: A Server value: visible ASCII and inner spaces (RFC 9110 5.5, without obs-text).
_SERVER_HEADER = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?)?")

#: The keys of a C{[static:NAME]} section: the numbers and yes/no keys are a service's.
_STATIC_NUMBERS = ("instances", "max_connections", "uid", "gid", "memory_limit")
_STATIC_KEYS = ("root", "paths", "hosts", "isolation", "max_age", "lazy", *_STATIC_NUMBERS)
_MAX_AGE = _Number(int, 0, "seconds")
_BOOL_WORDS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}



# ---------------------------------------------------------------------------------------------
# access.log fields (the values of access_log_fields; the log daemon writes them)

#: Every field an operator can put in access.log (``access_log_fields``).
ACCESS_FIELDS = (
    "client",
    "ident",
    "user",
    "time",
    "request",
    "status",
    "bytes",
    "referer",
    "user_agent",
    "service",
    "instance",
    "request_id",
    "response_time",
    "tls",
    "host",
)

#: ``combined``: Apache's combined format, then the service and the response time.
COMBINED = (
    "client",
    "ident",
    "user",
    "time",
    "request",
    "status",
    "bytes",
    "referer",
    "user_agent",
    "service",
    "response_time",
)


def parse_access_fields(text: str) -> tuple[str, ...]:
    """The fields named by an ``access_log_fields`` value; C{combined} stands for L{COMBINED}.

    @raise ValueError: for an unknown name or an empty list.
    """
    fields: list[str] = []
    for word in text.split():
        if word == "combined":
            fields.extend(COMBINED)
        elif word in ACCESS_FIELDS:
            fields.append(word)
        else:
            raise ValueError(
                f"unknown access log field {word!r}; fields are combined, " + ", ".join(ACCESS_FIELDS)
            )
    if not fields:
        raise ValueError("expected one or more access log fields, e.g. combined")
    return tuple(fields)


# ---------------------------------------------------------------------------------------------
# Services


_PATH_CHARS = re.compile(r"[\x21-\x7e]+")


def normalize_path(path: str) -> str:
    """Check a service path prefix and return its canonical spelling.

    The router compares raw request bytes, so a prefix must be written the way it appears on
    the wire: printable ASCII (percent-encode anything else), no query or fragment, no empty
    or dot segments.  A trailing C{/} is dropped (except for C{/} itself) because a prefix
    already matches everything below it.

    @raise ValueError: saying what is wrong.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{path!r} must start with '/'")
    if not _PATH_CHARS.fullmatch(path):
        raise ValueError(
            f"{path!r} may contain only printable ASCII without spaces; "
            "percent-encode other characters as clients send them"
        )
    for ch in "?#":
        if ch in path:
            raise ValueError(f"{path!r} contains {ch!r}; a path prefix has no query or fragment")
    if "//" in path:
        raise ValueError(f"{path!r} contains an empty segment ('//')")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"{path!r} contains a '.' or '..' segment")
    if len(path) > 1:
        path = path.rstrip("/")
    return path


_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")


def normalize_host(pattern: str) -> str:
    """Check one C{hosts} item and return its canonical spelling (lower case, no final dot).

    An item is a DNS name (ASCII: write an international name in its C{xn--} form), an IPv4
    address, a bracketed IPv6 address, or C{*.} followed by a DNS name, which matches one or
    more labels in front of that name (C{*.example.org}: C{a.example.org},
    C{a.b.example.org}, not C{example.org}).  No port: hosts are compared without one.

    @raise ValueError: saying what is wrong.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"expected a host name, got {pattern!r}")
    name = pattern.lower()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if _IPV6.fullmatch(name):
        return name
    if ":" in name:
        raise ValueError(f"{pattern!r} has a port; hosts are compared without their port")
    wild = name.startswith("*.")
    rest = name[2:] if wild else name
    if "*" in rest:
        raise ValueError(f"{pattern!r}: a wildcard is only allowed as the whole first label, as in *.example.com")
    if len(rest) > 253 or not _DNS_NAME.fullmatch(rest):
        raise ValueError(
            f"{pattern!r} is not a host name (letters, digits and hyphens in dot-separated labels; "
            "write an international name in its xn-- form)"
        )
    if wild and _IPV4.fullmatch(rest):
        raise ValueError(f"{pattern!r}: a wildcard cannot stand before an IP address")
    return name


def host_pattern_matches(pattern: str, name: str) -> bool:
    """Does the canonical C{hosts} item C{pattern} take the canonical host C{name}?

    The rule L{okws_twisted.wire.routing.RouteTable} applies with dict probes; here spelt
    out, for the checks of the configuration.
    """
    if not pattern.startswith("*."):
        return pattern == name
    suffix = pattern[1:]
    return name.endswith(suffix) and len(name) > len(suffix) and name[-len(suffix) - 1] != "."


_IDENTIFIER = re.compile(r"[^\W\d]\w*")


def _check_resource(resource: object) -> None:
    def dotted(text: str) -> bool:
        return all(
            _IDENTIFIER.fullmatch(part) and not keyword.iskeyword(part)
            for part in text.split(".")
        )

    if (
        not isinstance(resource, str)
        or resource.count(":") != 1
        or not all(dotted(side) for side in resource.split(":"))
    ):
        raise _FieldError(
            "resource", f"expected package.module:Class, got {resource!r}"
        )


@dataclass(frozen=True)
class ServiceConfig:
    """One pool of instances: a service from a C{[service:NAME]} section, or a static-file
    server from a C{[static:NAME]} section (C{kind = "static"}).

    A static pool is a service whose resource is the built-in L{STATIC_RESOURCE}: it runs the
    same runtime, is routed, pooled, limited, relaunched and logged the same way, and shares
    the services' name space.  It has no body (C{max_body = 0}), no network, no scratch
    directory, may not fork, and its C{root} is the absolute directory it serves.

    C{paths} are normalised at construction (see L{normalize_path}), so two spellings of the
    same prefix compare equal.
    """

    name: str
    resource: str
    paths: tuple[str, ...]
    #: The hosts this service serves (canonical, see L{normalize_host}); empty: every host no
    #: service names.
    hosts: tuple[str, ...] = ()
    #: L{ISOLATIONS}; L{None} until the site fills in its default (L{SiteConfig}).
    isolation: str | None = None
    instances: int = 1
    max_body: int = 2 * 1024 * 1024
    max_connections: int = 1000
    restart_after_requests: int = 0
    restart_after_seconds: float = 0.0
    uid: int = 0
    gid: int = 0
    network: str = "none"
    scratch: bool = False
    lazy: bool = False
    fork: bool = False
    memory_limit: int = 1 << 30
    max_processes: int = 64
    #: The C{[db:NAME]} this service reaches ("" for none) and the queries it may run there.
    db: str = ""
    queries: tuple[str, ...] = ()
    kind: str = "service"
    #: C{static} only: the directory served (absolute).
    root: str = ""
    #: C{static} only: C{Cache-Control: public, max-age=N}; 0 means C{no-cache}.
    max_age: int = 3600

    @property
    def section(self) -> str:
        """The ini section it came from: C{service:hello}, C{static:assets}."""
        return f"{self.kind}:{self.name}"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SERVICE_NAME.fullmatch(self.name):
            raise _FieldError(
                None,
                f"service name {self.name!r} must match [a-z][a-z0-9_-]{{0,31}} "
                "(lower case, starting with a letter, at most 32 characters)",
            )
        _check_resource(self.resource)
        object.__setattr__(self, "paths", _normalize_paths(self.paths))
        object.__setattr__(self, "hosts", _normalize_hosts(self.hosts))
        if self.isolation is not None and self.isolation not in ISOLATIONS:
            raise _FieldError("isolation", f"expected one of {', '.join(ISOLATIONS)}, got {self.isolation!r}")
        if self.network not in _NETWORK_CHOICES:
            raise _FieldError("network", f"expected one of {', '.join(_NETWORK_CHOICES)}, got {self.network!r}")
        for key in _SERVICE_BOOLEANS:
            if not isinstance(getattr(self, key), bool):
                raise _FieldError(key, f"expected yes or no, got {getattr(self, key)!r}")
        for key, number in _SERVICE_NUMBERS.items():
            problem = number.check(getattr(self, key))
            if problem:
                raise _FieldError(key, problem)
        if not isinstance(self.db, str):
            raise _FieldError("db", f"expected the name of a [db:NAME] section, got {self.db!r}")
        queries = self.queries
        if isinstance(queries, (str, bytes)) or not isinstance(queries, (tuple, list)) or not all(
            isinstance(q, str) and q.isidentifier() for q in queries
        ):
            raise _FieldError("queries", f"expected query names separated by spaces, got {queries!r}")
        object.__setattr__(self, "queries", tuple(queries))
        if len(set(self.queries)) != len(self.queries):
            raise _FieldError("queries", "a query is listed twice")
        if self.db and not self.queries:
            raise _FieldError("queries", f"missing; a service with db = {self.db} lists the queries it may run")
        if self.queries and not self.db:
            raise _FieldError("db", "missing; queries are granted on a database: add db = NAME")
        if self.kind not in KINDS:
            raise _FieldError(None, f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        problem = _MAX_AGE.check(self.max_age)
        if problem:
            raise _FieldError("max_age", problem)
        if self.kind == "static":
            self._check_static()
        elif self.root:
            raise _FieldError("root", "only a [static:NAME] section has a root")

    def _check_static(self) -> None:
        if self.resource != STATIC_RESOURCE:
            raise _FieldError("resource", f"a static pool serves {STATIC_RESOURCE}, not {self.resource!r}")
        if not isinstance(self.root, str) or not os.path.isabs(self.root):
            raise _FieldError("root", f"expected an absolute directory, got {self.root!r}")
        for key, fixed in (("max_body", 0), ("network", "none"), ("scratch", False), ("fork", False), ("db", "")):
            if getattr(self, key) != fixed:
                raise _FieldError(key, f"a static pool has {key} = {fixed!r}, got {getattr(self, key)!r}")


def _normalize_paths(paths: object) -> tuple[str, ...]:
    return _normalized("paths", paths, normalize_path, "path strings", "paths like /hello")


def _normalize_hosts(hosts: object) -> tuple[str, ...]:
    return _normalized("hosts", hosts, normalize_host, "host names", None)


def _normalized(key: str, items: object, normalize: Any, what: str, example: str | None) -> tuple[str, ...]:
    """C{items} (a C{paths} or C{hosts} list) in canonical spelling, each once; C{example}:
    what the error says when the list must not be empty."""
    if isinstance(items, (str, bytes)) or not isinstance(items, (tuple, list)):
        raise _FieldError(key, f"expected a sequence of {what}, got {items!r}")
    if not items and example is not None:
        raise _FieldError(key, f"expected one or more {example}, got none")
    seen: dict[str, str] = {}
    for item in items:
        try:
            canonical = normalize(item)
        except ValueError as e:
            raise _FieldError(key, str(e)) from None
        if canonical in seen:
            same = "" if seen[canonical] == item else f" (as {seen[canonical]!r})"
            raise _FieldError(key, f"{item!r} is listed twice{same}")
        seen[canonical] = item
    return tuple(seen)


# ---------------------------------------------------------------------------------------------
# The site


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """The whole validated site: what every process is told at start-up.

    Keyword-only, because most fields are numbers whose order nobody should need to know.
    Validation raises L{ConfigError} naming C{file}, as the ini file's reader would.
    """

    file: str
    base_dir: str
    listen: tuple[Listener, ...] = field(
        default_factory=lambda: (parse_listener(DEFAULT_LISTEN, "/"),)
    )
    log_dir: str
    templates: str
    #: Where the launcher keeps what must outlive a restart (the services' CSRF secrets).
    state_dir: str = "/var/lib/okws/state"
    max_head: int = 16384
    max_request_line: int = 8192
    max_headers: int = 100
    head_timeout: float = 30.0
    queue_max: int = 40
    queue_timeout: float = 30.0
    retry_after: int = 5
    restart_delay_min: float = 1.0
    restart_delay_max: float = 60.0
    stable_after: float = 30.0
    drain_timeout: float = 10.0
    kill_timeout: float = 5.0
    keepalive_timeout: float = 60.0
    body_timeout: float = 60.0
    body_min_rate: int = 1024
    max_requests_per_connection: int = 1000
    max_connections: int = 10000
    resume_connections: int = 9000
    crash_budget: int = 30
    crash_window: float = 50.0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    control_socket: str = ""
    admin: Listener | None = None
    jail_root: str = "/var/lib/okws/jails"
    dispatcher_uid: int = 0
    logd_uid: int = 0
    #: The log daemon's nice value while it keeps up (okws_twisted.logd.priority); 0: normal.
    logd_nice: int = 19
    pubd_uid: int = 0
    uid_range: tuple[int, int] = (51000, 52000)
    template_timeout: float = 5.0
    log_buffer: int = 65536
    log_max_size: int = 0
    log_keep: int = 5
    access_log: bool = True
    access_log_json: bool = False
    cgroups: bool = True
    access_log_fields: tuple[str, ...] = COMBINED
    proxy_trusted: tuple[str, ...] = DEFAULT_PROXY_TRUSTED
    tls_handshake_timeout: float = 10.0
    server_header: str = DEFAULT_SERVER_HEADER
    health: str = "all"
    #: The host whose services answer requests for hosts no service names (L{None}: a 404).
    default_host: str | None = None
    #: The C{isolation} of services that do not say (L{ISOLATIONS}).
    isolation: str = "connection"
    services: tuple[ServiceConfig, ...]
    databases: tuple[DatabaseConfig, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.file, str) or not self.file:
            raise ValueError(f"file must be the path of the config file, got {self.file!r}")

        def fail(section: str | None, key: str | None, message: str) -> ConfigError:
            return ConfigError(self.file, section, key, message)

        if not isinstance(self.base_dir, str) or not os.path.isabs(self.base_dir):
            raise fail(None, None, f"base_dir must be an absolute directory, got {self.base_dir!r}")
        for key in ("log_dir", "templates", "state_dir"):
            value = getattr(self, key)
            if not isinstance(value, str) or not os.path.isabs(value):
                raise fail("okws", key, f"expected an absolute directory, got {value!r}")

        listen = self.listen
        if not isinstance(listen, (tuple, list)) or not listen or not all(
            isinstance(item, Listener) for item in listen
        ):
            raise fail("okws", "listen", f"expected one or more listeners, got {listen!r}")
        object.__setattr__(self, "listen", tuple(listen))
        _check_overlaps(self.listen, fail)

        for key, number in _OKWS_NUMBERS.items():
            value = getattr(self, key)
            problem = number.check(value)
            if problem:
                raise fail("okws", key, problem)
            if number.kind is float:
                object.__setattr__(self, key, float(value))
        for key in _OKWS_BOOLEANS:
            if not isinstance(getattr(self, key), bool):
                raise fail("okws", key, f"expected yes or no, got {getattr(self, key)!r}")
        fields = self.access_log_fields
        if (
            not isinstance(fields, (tuple, list))
            or not fields
            or not all(isinstance(name, str) and name in ACCESS_FIELDS for name in fields)
        ):
            raise fail("okws", "access_log_fields", f"expected names of access log fields, got {fields!r}")
        object.__setattr__(self, "access_log_fields", tuple(fields))
        trusted = self.proxy_trusted
        if not isinstance(trusted, (tuple, list)) or not all(isinstance(t, str) for t in trusted):
            raise fail("okws", "proxy_trusted", f"expected addresses or networks, got {trusted!r}")
        try:
            trusted_networks(trusted)
        except ValueError as e:
            raise fail("okws", "proxy_trusted", str(e)) from None
        object.__setattr__(self, "proxy_trusted", tuple(trusted))
        if not trusted and any(listener.proxy for listener in self.listen):
            raise fail("okws", "proxy_trusted", "is empty, so no load balancer could connect to the "
                       "haproxy: listeners; list the balancers' addresses")
        problem = server_header_problem(self.server_header)
        if problem:
            raise fail("okws", "server_header", problem)
        if self.health not in HEALTH_CHOICES:
            raise fail("okws", "health", f"expected one of {', '.join(HEALTH_CHOICES)}, got {self.health!r}")
        if self.restart_delay_min > self.restart_delay_max:
            raise fail(
                "okws",
                "restart_delay_min",
                f"{self.restart_delay_min:g} is above restart_delay_max "
                f"({self.restart_delay_max:g})",
            )
        if self.resume_connections > self.max_connections:
            raise fail(
                "okws",
                "resume_connections",
                f"{self.resume_connections} is above max_connections ({self.max_connections})",
            )
        if self.max_request_line > self.max_head:
            raise fail(
                "okws",
                "max_request_line",
                f"{self.max_request_line} is above max_head ({self.max_head}), "
                "which would answer 431 before 414",
            )

        services = self.services
        if not isinstance(services, (tuple, list)) or not all(
            isinstance(item, ServiceConfig) for item in services
        ):
            raise fail(None, None, f"services must be ServiceConfig values, got {services!r}")
        if not services:
            raise fail(None, None, "no [service:NAME] or [static:NAME] section; at least one is required")
        if self.isolation not in ISOLATIONS:
            raise fail("okws", "isolation", f"expected one of {', '.join(ISOLATIONS)}, got {self.isolation!r}")
        # Services and static pools that leave isolation out take the site's.
        services = tuple(
            s if s.isolation is not None else dataclasses.replace(s, isolation=self.isolation) for s in services
        )
        object.__setattr__(self, "services", services)
        databases = self.databases
        if not isinstance(databases, (tuple, list)) or not all(isinstance(d, DatabaseConfig) for d in databases):
            raise fail(None, None, f"databases must be DatabaseConfig values, got {databases!r}")
        object.__setattr__(self, "databases", tuple(databases))
        db_names = [d.name for d in self.databases]
        for name in db_names:
            if db_names.count(name) > 1:
                raise fail(DB_PREFIX + name, None, "this database is defined twice")
        owners: dict[tuple[str | None, str], str] = {}
        names: dict[str, str] = {}
        for service in self.services:
            section = service.section
            if service.name in names:
                if names[service.name] == section:
                    raise fail(section, None, "this service is defined twice" if service.kind == "service" else "this static pool is defined twice")
                raise fail(section, None, f"the name {service.name!r} is already used by [{names[service.name]}]; "
                           "services and static pools share one name space")
            names[service.name] = section
            if service.db and service.db not in db_names:
                raise fail(section, "db", f"no [{DB_PREFIX}{service.db}] section"
                           + (f"; the databases are {', '.join(db_names)}" if db_names else ""))
            for host in service.hosts or (None,):
                for path in service.paths:
                    owner = owners.get((host, path))
                    if owner is not None:
                        on = "" if host is None else f" on host {host}"
                        raise fail(section, "paths", f"{path!r}{on} is already claimed by [{owner}]")
                    owners[(host, path)] = section
        if self.default_host is not None:
            self._check_default_host(fail)

    def _check_default_host(self, fail: Any) -> None:
        """C{default_host} must be a host name that some service's C{hosts} takes, and of use."""
        try:
            name = normalize_host(self.default_host)  # type: ignore[arg-type]
        except ValueError as e:
            raise fail("okws", "default_host", str(e)) from None
        if name.startswith("*."):
            raise fail("okws", "default_host", f"{self.default_host!r} must be a host name, not a wildcard")
        everywhere = [s.section for s in self.services if not s.hosts]
        if everywhere:
            raise fail(
                "okws", "default_host",
                f"would never be used: [{everywhere[0]}] has no hosts, so it serves every host "
                "that no service names",
            )
        if not any(host_pattern_matches(p, name) for s in self.services for p in s.hosts):
            raise fail("okws", "default_host", f"{self.default_host!r} is not in any service's hosts")
        object.__setattr__(self, "default_host", name)

    def database(self, name: str) -> DatabaseConfig | None:
        """The C{[db:NAME]} called C{name}, if there is one."""
        return next((d for d in self.databases if d.name == name), None)

    def to_json(self, sql_for: str | None = None) -> str:
        """Serialise for a child process; L{from_json} gives back an equal value.

        The SQL texts of the databases' queries and schema files are left out,
        except those of database C{sql_for}, for its proxy: no other process
        ever receives SQL.
        """
        site = dataclasses.replace(
            self, databases=tuple(d if d.name == sql_for else d.without_sql() for d in self.databases)
        )
        document = dataclasses.asdict(site)
        document["format"] = _JSON_FORMAT
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SiteConfig:
        """Read what L{to_json} wrote, validating it again.

        @raise ValueError: if C{text} is not a config this version of okws wrote.
        """
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.pop("format", None) != _JSON_FORMAT:
                raise ValueError(f"not an okws site config (format {_JSON_FORMAT})")
            document["listen"] = tuple(Listener(**item) for item in document["listen"])
            document["uid_range"] = tuple(document.get("uid_range", (51000, 52000)))
            if document.get("admin") is not None:
                document["admin"] = Listener(**document["admin"])
            if isinstance(document.get("proxy_trusted"), list):
                document["proxy_trusted"] = tuple(document["proxy_trusted"])
            if isinstance(document.get("access_log_fields"), list):
                document["access_log_fields"] = tuple(document["access_log_fields"])
            document["services"] = tuple(
                ServiceConfig(**{
                    **item, "paths": tuple(item["paths"]), "hosts": tuple(item.get("hosts", ())),
                    "queries": tuple(item.get("queries", ())),
                })
                for item in document["services"]
            )
            document["databases"] = tuple(DatabaseConfig(**item) for item in document.get("databases", ()))
            return cls(**document)
        except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as e:
            raise ValueError(f"invalid site config JSON: {e}") from e


def server_header_problem(value: object) -> str | None:
    """Why C{value} cannot be the C{Server} field's value, or L{None}."""
    if not isinstance(value, str) or not _SERVER_HEADER.fullmatch(value):
        return (
            f"expected printable ASCII (at most 256 characters, no leading or trailing space), "
            f"or nothing for no Server field, got {value!r}"
        )
    return None


def _check_overlaps(listeners: tuple[Listener, ...], fail: Any) -> None:
    """Refuse two listeners the kernel would refuse to bind together.

    Port 0 (a port the kernel picks) never clashes; a wildcard interface clashes with every
    address of its family on the same port.
    """
    seen: dict[tuple[str, Any], list[Listener]] = {}
    for listener in listeners:
        if listener.kind != "unix" and listener.port == 0:
            continue
        for earlier in seen.get(listener._binds(), []):
            if listener.kind == "unix" or earlier.interface == listener.interface:
                raise fail(
                    "okws", "listen",
                    f"{listener.description!r} is listed twice (as {earlier.description!r})",
                )
            wildcard = WILDCARD[listener.kind]
            if wildcard in (earlier.interface, listener.interface):
                raise fail(
                    "okws", "listen",
                    f"{listener.description!r} overlaps {earlier.description!r}: "
                    f"{wildcard} already covers every address on port {listener.port}",
                )
        seen.setdefault(listener._binds(), []).append(listener)

