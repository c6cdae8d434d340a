# -*- test-case-name: tests.test_config -*-
"""Site configuration, read once by the launcher (OKWS's okws_config).

The launcher calls L{load} on the operator's ini file before it spawns anything, so every
mistake stops start-up with one line naming the file, the section and the key.  Children never
re-read the ini file: the launcher hands each one the validated L{SiteConfig} as JSON
(L{SiteConfig.to_json} / L{SiteConfig.from_json}).

The values are frozen dataclasses that validate themselves at construction, so a bad value
cannot travel from one process to another.  Pure logic: stdlib only, no I/O except in L{load}.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import ipaddress
import json
import keyword
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from okws_twisted.logformat import ACCESS_FIELDS, COMBINED, parse_access_fields
from okws_twisted.proxyproto import trusted_networks

__all__ = [
    "ConfigError",
    "Listener",
    "ServiceConfig",
    "SiteConfig",
    "DEFAULT_LISTEN",
    "load",
    "parse",
    "parse_listener",
    "normalize_path",
]

#: The listener used when [okws] has no ``listen`` key: loopback only, so a development site
#: is not exposed to the network by accident.
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"

#: The version of the JSON document L{SiteConfig.to_json} writes.
_JSON_FORMAT = 1

_SERVICE_PREFIX = "service:"
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_SUPPORTED_KINDS = ("tcp", "tcp6", "unix")
#: Twisted's spelling of a PROXY protocol listener: ``haproxy:`` before the endpoint.
PROXY_PREFIX = "haproxy:"
#: The default of [okws] proxy_trusted: the load balancer runs on this host.
DEFAULT_PROXY_TRUSTED = ("127.0.0.1", "::1")
_WILDCARD = {"tcp": "0.0.0.0", "tcp6": "::"}


class ConfigError(Exception):
    """A configuration mistake, reported as one line naming where it is.

    C{str(e)} reads C{"site.ini: [service:hello] paths: '/a' is already claimed by
    [service:other]"}; the C{"[section] "} and C{"key: "} parts are left out when unknown.
    """

    def __init__(self, file: str, section: str | None, key: str | None, message: str) -> None:
        super().__init__(file, section, key, message)
        self.file = file
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}: "
        if self.section is not None:
            where += f"[{self.section}] "
        if self.key is not None:
            where += f"{self.key}: "
        return " ".join((where + self.message).splitlines())


class _FieldError(ValueError):
    """A value dataclass without a file rejected one field; L{parse} adds file and section."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


# ---------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True)
class _Number:
    """How one numeric key is written and which values make sense."""

    kind: type  # int or float
    minimum: float
    unit: str
    maximum: float | None = None
    exclusive: bool = False  # True: the value must be strictly above C{minimum}

    def expected(self) -> str:
        noun = "a whole number of" if self.kind is int else "a number of"
        if self.maximum is not None:
            return f"{noun} {self.unit} from {self.minimum:g} to {self.maximum:g}"
        if self.exclusive:
            return f"{noun} {self.unit} above {self.minimum:g}"
        return f"{noun} {self.unit}, {self.minimum:g} or more"

    def check(self, value: object, written: str | None = None) -> str | None:
        """Return why C{value} is wrong (quoting C{written}, the ini text, if given), or L{None}."""
        shown = repr(written) if written is not None else repr(value)
        wrong = f"expected {self.expected()}, got {shown}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return wrong
        if self.kind is int and not isinstance(value, int):
            return wrong
        if not math.isfinite(value):
            return wrong
        too_low = value <= self.minimum if self.exclusive else value < self.minimum
        if too_low or (self.maximum is not None and value > self.maximum):
            return wrong
        return None

    def convert(self, text: str) -> int | float:
        """Read the ini spelling: plain digits (C{_} separators allowed), a point for floats."""
        pattern = _INT_TEXT if self.kind is int else _FLOAT_TEXT
        if not pattern.fullmatch(text):
            raise _FieldError(None, f"expected {self.expected()}, got {text!r}")
        return self.kind(text)


_INT_TEXT = re.compile(r"[0-9]+(?:_[0-9]+)*")
_FLOAT_TEXT = re.compile(r"[0-9]+(?:_[0-9]+)*(?:\.[0-9]*)?|\.[0-9]+")

_SECONDS_POSITIVE = _Number(float, 0, "seconds", exclusive=True)
_SECONDS_OR_ZERO = _Number(float, 0, "seconds")

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
    "max_requests_per_connection": _Number(int, 1, "requests"),
    "max_connections": _Number(int, 1, "connections"),
    "resume_connections": _Number(int, 0, "connections"),
    "crash_budget": _Number(int, 0, "crashes"),
    "crash_window": _SECONDS_POSITIVE,
    "heartbeat_interval": _SECONDS_POSITIVE,
    "heartbeat_timeout": _SECONDS_POSITIVE,
    "dispatcher_uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "logd_uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "pubd_uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "template_timeout": _SECONDS_POSITIVE,
    "log_buffer": _Number(int, 1, "records"),
    "log_max_size": _Number(int, 0, "bytes"),
    "log_keep": _Number(int, 1, "files", maximum=1000),
    "tls_handshake_timeout": _SECONDS_POSITIVE,
}

#: The yes/no [okws] keys.
_OKWS_BOOLEANS = ("access_log", "access_log_json")
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
}

_OKWS_KEYS = ("listen", "log_dir", "templates", "control_socket", "admin", "jail_root", "uid_range", "proxy_trusted", *_OKWS_NUMBERS, *_OKWS_BOOLEANS, "access_log_fields")
_SERVICE_KEYS = ("resource", "paths", "network", "scratch", "lazy", *_SERVICE_NUMBERS)
_NETWORK_CHOICES = ("none", "host")
_BOOL_WORDS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


# ---------------------------------------------------------------------------------------------
# Listeners


@dataclass(frozen=True)
class Listener:
    """One listening socket the launcher opens and the dispatcher inherits.

    Build one from an endpoint string with L{parse_listener}.  An empty C{interface} means the
    kind's wildcard (C{0.0.0.0} or C{::}); an empty C{description} is filled with the canonical
    endpoint string.
    """

    kind: str
    port: int | None = None
    interface: str = ""
    path: str | None = None
    backlog: int = 2048
    mode: int = 0o666
    description: str = ""
    #: The listener is behind a load balancer: each connection starts with a PROXY
    #: protocol header (v1 or v2), accepted only from C{proxy_trusted} addresses.
    proxy: bool = False
    #: An C{ssl:} listener: the TLS front terminates TLS with this key and certificate
    #: (absolute paths; the certificate file may hold the chain after the certificate).
    private_key: str | None = None
    cert_key: str | None = None
    #: A C{tls:} listener: the TLS front picks the certificate by SNI among the PEM
    #: files of this directory (absolute path), as Twisted's C{tls:} endpoint does.
    sni_dir: str | None = None

    @property
    def tls(self) -> bool:
        """Whether the TLS front (not the dispatcher) accepts on this listener."""
        return self.private_key is not None or self.sni_dir is not None

    def __post_init__(self) -> None:
        if not isinstance(self.proxy, bool):
            raise ValueError(f"proxy must be true or false, got {self.proxy!r}")
        if (self.private_key is None) != (self.cert_key is None):
            raise ValueError("a TLS listener needs both privateKey and certKey")
        for key in (self.private_key, self.cert_key):
            if key is not None and (not isinstance(key, str) or not os.path.isabs(key)):
                raise ValueError(f"a key or certificate must be an absolute path, got {key!r}")
        if self.sni_dir is not None:
            if not isinstance(self.sni_dir, str) or not os.path.isabs(self.sni_dir):
                raise ValueError(f"a certificate directory must be an absolute path, got {self.sni_dir!r}")
            if self.private_key is not None:
                raise ValueError("a TLS listener has either privateKey/certKey or a certificate directory")
        if self.tls and (self.kind == "unix" or self.proxy):
            raise ValueError("TLS listeners are TCP, without haproxy:")
        if self.kind not in _SUPPORTED_KINDS:
            raise ValueError(
                f"{self.kind!r} listeners are not supported yet; supported now: "
                + ", ".join(_SUPPORTED_KINDS)
            )
        if isinstance(self.backlog, bool) or not isinstance(self.backlog, int) or not (
            1 <= self.backlog <= 65535
        ):
            raise ValueError(
                f"backlog must be a whole number from 1 to 65535, got {self.backlog!r}"
            )
        if self.kind == "unix":
            self._check_unix()
        else:
            self._check_tcp()
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {self.description!r}")
        if not self.description:
            object.__setattr__(self, "description", self._canonical())

    def _check_tcp(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            0 <= self.port <= 65535
        ):
            raise ValueError(f"port must be a whole number from 0 to 65535, got {self.port!r}")
        if self.path is not None or self.mode != 0o666:
            raise ValueError(f"a {self.kind} listener has no path or mode")
        if not isinstance(self.interface, str):
            raise ValueError(f"interface must be a string, got {self.interface!r}")
        if not self.interface:
            object.__setattr__(self, "interface", _WILDCARD[self.kind])
        family = ipaddress.IPv4Address if self.kind == "tcp" else ipaddress.IPv6Address
        try:
            # One spelling per address, so SiteConfig finds overlapping listeners.
            object.__setattr__(self, "interface", str(family(self.interface)))
        except ValueError:
            want = "an IPv4 address like 127.0.0.1" if self.kind == "tcp" else (
                "an IPv6 address like \\:\\:1 (escape each ':' as '\\:')"
            )
            raise ValueError(f"interface must be {want}, got {self.interface!r}") from None

    def _check_unix(self) -> None:
        if self.port is not None or self.interface:
            raise ValueError("a unix listener has a path, not a port or an interface")
        if not isinstance(self.path, str) or not os.path.isabs(self.path):
            raise ValueError(f"a unix listener needs an absolute path, got {self.path!r}")
        if len(os.fsencode(self.path)) > _UNIX_PATH_MAX:
            raise ValueError(
                f"the socket path {self.path!r} is longer than {_UNIX_PATH_MAX} bytes, "
                "the limit of a Unix socket address; use a shorter path"
            )
        if isinstance(self.mode, bool) or not isinstance(self.mode, int) or not (
            0 <= self.mode <= 0o777
        ):
            shown = oct(self.mode) if isinstance(self.mode, int) else repr(self.mode)
            raise ValueError(f"mode must be octal permissions from 0 to 777, got {shown}")

    def _canonical(self) -> str:
        prefix = PROXY_PREFIX if self.proxy else ""
        if self.kind == "unix":
            assert self.path is not None
            return f"{prefix}unix:{_escape(self.path)}:mode={self.mode:o}:backlog={self.backlog}"
        if self.sni_dir is not None:
            return f"tls:{self.port}:path={_escape(self.sni_dir)}:interface={_escape(self.interface)}:backlog={self.backlog}"
        if self.tls:
            assert self.private_key is not None and self.cert_key is not None
            return (
                f"ssl:{self.port}:interface={_escape(self.interface)}:backlog={self.backlog}"
                f":privateKey={_escape(self.private_key)}:certKey={_escape(self.cert_key)}"
            )
        return (
            f"{prefix}{self.kind}:{self.port}:interface={_escape(self.interface)}:backlog={self.backlog}"
        )

    def _binds(self) -> tuple[str, Any]:
        """What the kernel would refuse to bind twice (L{SiteConfig} checks overlaps)."""
        if self.kind == "unix":
            return ("unix", self.path)
        return (self.kind, self.port)


def _escape(text: str) -> str:
    """Escape a value for a Twisted endpoint string (C{:}, C{=} and C{\\})."""
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _endpoint_fields(description: str) -> list[list[str]]:
    """Split an endpoint string the way C{twisted.internet.endpoints} does.

    Fields are separated by C{:}; the first C{=} in a field makes it a keyword; a backslash
    escapes the next character.  Returns each field as C{[value]} or C{[name, value]}.
    """
    fields: list[list[str]] = []
    parts: list[str] = []
    current: list[str] = []
    ops = ":="
    chars = iter(description)
    for ch in chars:
        if ch in ops:
            parts.append("".join(current))
            current = []
            if ch == ":":
                fields.append(parts)
                parts = []
                ops = ":="
            else:
                ops = ":"
        elif ch == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("ends with a lone backslash")
            current.append(escaped)
        else:
            current.append(ch)
    parts.append("".join(current))
    fields.append(parts)
    return fields


_LISTENER_OPTIONS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "unix": ("address", "mode", "backlog"),
    "ssl": ("port", "interface", "backlog", "privateKey", "certKey"),
    "tls": ("port", "path", "interface", "backlog"),
}


def parse_listener(description: str, base_dir: str) -> Listener:
    """Parse one listener endpoint string; a relative unix path resolves against C{base_dir}.

    Accepts the subset of Twisted endpoint strings okws can serve now, each optionally
    behind Twisted's C{haproxy:} prefix (PROXY protocol v1 or v2 first on every connection):
    C{tcp:PORT[:interface=ADDR][:backlog=N]}, C{tcp6:...} likewise, and
    C{unix:PATH[:mode=666][:backlog=N]}, the TLS forms C{ssl:PORT:privateKey=KEY[:certKey=CHAIN]...}
    and C{tls:PORT:path=DIR...} (the certificate chosen by SNI from a directory of PEM files),
    or the same with every field named
    (C{tcp:port=8080:interface=127.0.0.1}, C{unix:address=PATH}).  Only the first field may be
    positional: Twisted's positional order differs between tcp and tcp6, so naming is safer.

    @raise ValueError: with a message that quotes C{description}.
    """
    try:
        return _parse_listener(description, base_dir)
    except ValueError as e:
        raise ValueError(f"{description!r}: {e}") from None


def _parse_listener(description: str, base_dir: str) -> Listener:
    proxy = description.startswith(PROXY_PREFIX)
    fields = _endpoint_fields(description.removeprefix(PROXY_PREFIX))
    if len(fields[0]) != 1 or not fields[0][0]:
        raise ValueError("expected KIND:... with KIND one of " + ", ".join(_SUPPORTED_KINDS))
    kind = fields[0][0]
    if kind in ("ssl", "tls") and proxy:
        raise ValueError(f"haproxy:{kind}: is not supported; put the PROXY listener and the TLS listener on separate ports")
    if kind.isdigit():
        raise ValueError(f"a bare port; write tcp:{kind}:interface=ADDR")
    if kind not in _LISTENER_OPTIONS:
        raise ValueError(
            f"{kind} listeners are not supported yet; supported now: "
            + ", ".join(_LISTENER_OPTIONS)
        )
    options = _LISTENER_OPTIONS[kind]
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in fields[1:]:
        if len(item) == 1:
            if named.get("interface") == "":
                # An unescaped IPv6 address: "interface=::1" splits at its colons.
                if kind == "tcp6":
                    raise ValueError("escape each ':' of an IPv6 interface as '\\:', "
                                     "e.g. interface=\\:\\:1")
                raise ValueError("an IPv6 interface needs tcp6, with each ':' escaped as "
                                 "'\\:', e.g. tcp6:80:interface=\\:\\:1")
            if named or positional:
                raise ValueError(
                    f"unexpected {item[0]!r}: after the first field give options by name "
                    f"({', '.join(o + '=' for o in options[1:])})"
                )
            positional.append(item[0])
        else:
            name, value = item
            if name not in options:
                raise ValueError(
                    f"unknown option {name!r} for {kind}; options are " + ", ".join(options)
                )
            if name in named:
                raise ValueError(f"option {name!r} is given twice")
            named[name] = value
    if positional:
        if options[0] in named:
            raise ValueError(f"{options[0]} is given twice")
        named[options[0]] = positional[0]
    if options[0] not in named or not named[options[0]]:
        raise ValueError(f"missing the {'port' if kind != 'unix' else 'socket path'}")

    kwargs: dict[str, Any] = {"kind": kind, "description": description, "proxy": proxy}
    if "backlog" in named:
        kwargs["backlog"] = _listener_int("backlog", named["backlog"])
    if kind == "unix":
        kwargs["path"] = os.path.normpath(os.path.join(base_dir, named["address"]))
        if "mode" in named:
            text = named["mode"]
            if not re.fullmatch(r"(?:0o?)?[0-7]{1,4}", text):
                raise ValueError(f"mode must be octal permissions like 666, got {text!r}")
            kwargs["mode"] = int(text.removeprefix("0o"), 8)
    else:
        kwargs["port"] = _listener_int("port", named["port"])
        if "interface" in named:
            kwargs["interface"] = named["interface"]
            if not kwargs["interface"]:
                raise ValueError("interface is empty; leave it out to listen on every address")
    if kind in ("ssl", "tls"):
        # Twisted's ssl: and tls: take IPv4 and IPv6 interfaces alike.
        kwargs["kind"] = "tcp6" if ":" in kwargs.get("interface", "") else "tcp"
    if kind == "tls":
        if not named.get("path"):
            raise ValueError("a tls listener needs path=DIR, a directory of PEM files (key and certificate chain)")
        kwargs["sni_dir"] = os.path.normpath(os.path.join(base_dir, named["path"]))
    if kind == "ssl":
        if not named.get("privateKey"):
            raise ValueError("an ssl listener needs privateKey=KEY.pem")
        kwargs["private_key"] = os.path.normpath(os.path.join(base_dir, named["privateKey"]))
        # As in Twisted, certKey defaults to privateKey (one file holding both).
        kwargs["cert_key"] = os.path.normpath(os.path.join(base_dir, named.get("certKey") or named["privateKey"]))
    return Listener(**kwargs)


def _listener_int(name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"{name} must be a whole number, got {text!r}")
    return int(text)


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
    """One service from a C{[service:NAME]} section.

    C{paths} are normalised at construction (see L{normalize_path}), so two spellings of the
    same prefix compare equal.
    """

    name: str
    resource: str
    paths: tuple[str, ...]
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SERVICE_NAME.fullmatch(self.name):
            raise _FieldError(
                None,
                f"service name {self.name!r} must match [a-z][a-z0-9_-]{{0,31}} "
                "(lower case, starting with a letter, at most 32 characters)",
            )
        _check_resource(self.resource)
        object.__setattr__(self, "paths", _normalize_paths(self.paths))
        if self.network not in _NETWORK_CHOICES:
            raise _FieldError("network", f"expected one of {', '.join(_NETWORK_CHOICES)}, got {self.network!r}")
        for key in ("scratch", "lazy"):
            if not isinstance(getattr(self, key), bool):
                raise _FieldError(key, f"expected yes or no, got {getattr(self, key)!r}")
        for key, number in _SERVICE_NUMBERS.items():
            problem = number.check(getattr(self, key))
            if problem:
                raise _FieldError(key, problem)


def _normalize_paths(paths: object) -> tuple[str, ...]:
    if isinstance(paths, (str, bytes)) or not isinstance(paths, (tuple, list)):
        raise _FieldError("paths", f"expected a sequence of path strings, got {paths!r}")
    if not paths:
        raise _FieldError("paths", "expected one or more paths like /hello, got none")
    seen: dict[str, str] = {}
    for path in paths:
        try:
            canonical = normalize_path(path)
        except ValueError as e:
            raise _FieldError("paths", str(e)) from None
        if canonical in seen:
            same = "" if seen[canonical] == path else f" (as {seen[canonical]!r})"
            raise _FieldError("paths", f"{path!r} is listed twice{same}")
        seen[canonical] = path
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
    pubd_uid: int = 0
    uid_range: tuple[int, int] = (51000, 52000)
    template_timeout: float = 5.0
    log_buffer: int = 65536
    log_max_size: int = 0
    log_keep: int = 5
    access_log: bool = True
    access_log_json: bool = False
    access_log_fields: tuple[str, ...] = COMBINED
    proxy_trusted: tuple[str, ...] = DEFAULT_PROXY_TRUSTED
    tls_handshake_timeout: float = 10.0
    services: tuple[ServiceConfig, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.file, str) or not self.file:
            raise ValueError(f"file must be the path of the config file, got {self.file!r}")

        def fail(section: str | None, key: str | None, message: str) -> ConfigError:
            return ConfigError(self.file, section, key, message)

        if not isinstance(self.base_dir, str) or not os.path.isabs(self.base_dir):
            raise fail(None, None, f"base_dir must be an absolute directory, got {self.base_dir!r}")
        for key in ("log_dir", "templates"):
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
            raise fail(None, None, "no [service:NAME] section; at least one service is required")
        object.__setattr__(self, "services", tuple(services))
        owners: dict[str, str] = {}
        names: set[str] = set()
        for service in self.services:
            section = _SERVICE_PREFIX + service.name
            if service.name in names:
                raise fail(section, None, "this service is defined twice")
            names.add(service.name)
            for path in service.paths:
                if path in owners:
                    raise fail(
                        section,
                        "paths",
                        f"{path!r} is already claimed by [{_SERVICE_PREFIX}{owners[path]}]",
                    )
                owners[path] = service.name

    def to_json(self) -> str:
        """Serialise for a child process; L{from_json} gives back an equal value."""
        document = dataclasses.asdict(self)
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
                ServiceConfig(**{**item, "paths": tuple(item["paths"])})
                for item in document["services"]
            )
            return cls(**document)
        except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as e:
            raise ValueError(f"invalid site config JSON: {e}") from e


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
            wildcard = _WILDCARD[listener.kind]
            if wildcard in (earlier.interface, listener.interface):
                raise fail(
                    "okws", "listen",
                    f"{listener.description!r} overlaps {earlier.description!r}: "
                    f"{wildcard} already covers every address on port {listener.port}",
                )
        seen.setdefault(listener._binds(), []).append(listener)


# ---------------------------------------------------------------------------------------------
# Reading the ini file


def load(path: str) -> SiteConfig:
    """Read and validate the site's ini file (UTF-8).

    Relative paths inside it resolve against the file's own directory, not the working
    directory, so the site behaves the same wherever it is started from.

    @raise ConfigError: for an unreadable file or any mistake in it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text (byte {e.start})") from None
    return parse(text, path, os.path.dirname(os.path.abspath(path)))


_UNIX_PATH_MAX = 107


def short_control_socket(base_dir: str) -> str:
    """Where the default control socket goes when the site's directory is too deep for one.

    A private runtime directory (created 0700 by the launcher), with a name
    derived from the site's directory so that okws-ctl finds the same one.
    """
    import hashlib

    if os.geteuid() == 0:
        runtime = "/run/okws"
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/okws-{os.geteuid()}"
    digest = hashlib.sha256(base_dir.encode()).hexdigest()[:16]
    return os.path.join(runtime, f"okws-{digest}.ctl")


def parse(text: str, file: str, base_dir: str) -> SiteConfig:
    """Validate ini C{text}; C{file} names it in errors, C{base_dir} anchors relative paths.

    @raise ConfigError: for the first mistake found, in file order: syntax, sections,
        [okws] keys, then each service.
    """
    base_dir = os.path.abspath(base_dir)
    parser = _read_ini(text, file)

    def fail(section: str | None, key: str | None, message: str) -> ConfigError:
        return ConfigError(file, section, key, message)

    for section in parser.sections():
        if section != "okws" and not section.startswith(_SERVICE_PREFIX):
            raise fail(section, None, "unknown section" + _suggest_section(section))
    if not parser.has_section("okws"):
        raise fail(None, None, "no [okws] section; it is required (it may be empty)")

    okws = parser["okws"]
    _check_keys(okws, "okws", _OKWS_KEYS, _SERVICE_KEYS, "a [service:NAME] section", fail)
    site: dict[str, Any] = {"file": file, "base_dir": base_dir}

    listen_text = okws.get("listen", DEFAULT_LISTEN)
    descriptions = listen_text.split()
    if not descriptions:
        raise fail("okws", "listen", "expected one or more endpoints, one per line, got none")
    listeners = []
    for description in descriptions:
        try:
            listeners.append(parse_listener(description, base_dir))
        except ValueError as e:
            raise fail("okws", "listen", str(e)) from None
    site["listen"] = tuple(listeners)

    for key, default in (("log_dir", "logs"), ("templates", "templates")):
        value = okws.get(key, default)
        if not value:
            raise fail("okws", key, "expected a directory, got nothing")
        if "\n" in value:
            raise fail("okws", key, f"expected one directory on one line, got {value!r}")
        site[key] = os.path.normpath(os.path.join(base_dir, value))

    jail_root = okws.get("jail_root", "/var/lib/okws/jails").strip()
    if not jail_root or "\n" in jail_root:
        raise fail("okws", "jail_root", f"expected one directory, got {jail_root!r}")
    site["jail_root"] = os.path.normpath(os.path.join(base_dir, jail_root))
    if "uid_range" in okws:
        m = re.fullmatch(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*", okws["uid_range"])
        if not m or not (0 < int(m.group(1)) < int(m.group(2)) < 2**31 - 1):
            raise fail("okws", "uid_range", f"expected FIRST-LAST with 0 < FIRST < LAST, got {okws['uid_range']!r}")
        site["uid_range"] = (int(m.group(1)), int(m.group(2)))

    control = okws.get("control_socket", "okws.ctl")
    if not control or "\n" in control:
        raise fail("okws", "control_socket", f"expected one path, got {control!r}")
    control = os.path.normpath(os.path.join(base_dir, control))
    if len(control.encode()) > _UNIX_PATH_MAX:
        if "control_socket" in okws:
            raise fail("okws", "control_socket", f"{control!r} is longer than a Unix socket path may be (107 bytes)")
        control = short_control_socket(base_dir)
    site["control_socket"] = control

    if okws.get("admin", "").strip():
        description = okws["admin"].strip()
        try:
            admin = parse_listener(description, base_dir)
        except ValueError as e:
            raise fail("okws", "admin", str(e)) from None
        if admin.proxy:
            raise fail("okws", "admin", f"{description!r}: the admin listener does not take PROXY headers; "
                       "leave out haproxy:")
        if admin.kind == "tcp" and "interface=" not in description:
            # The admin listener serves metrics: loopback unless asked otherwise.
            admin = dataclasses.replace(admin, interface="127.0.0.1")
        for listener in listeners:
            if listener.kind == admin.kind and listener.port == admin.port and listener.path == admin.path:
                raise fail("okws", "admin", f"{description!r} is also a public listener ({listener.description}); "
                           "the admin listener must be separate")
        site["admin"] = admin

    for key, number in _OKWS_NUMBERS.items():
        if key not in okws:
            continue
        try:
            value = number.convert(okws[key])
        except _FieldError as e:
            raise fail("okws", key, e.message) from None
        problem = number.check(value, okws[key])
        if problem:
            raise fail("okws", key, problem)
        site[key] = value
    _check_pairs(site, okws, fail)

    for key in _OKWS_BOOLEANS:
        if key in okws:
            word = okws[key].strip().lower()
            if word not in _TRUE + _FALSE:
                raise fail("okws", key, f"expected yes or no, got {okws[key]!r}")
            site[key] = word in _TRUE
    if "access_log_fields" in okws:
        try:
            site["access_log_fields"] = parse_access_fields(okws["access_log_fields"])
        except ValueError as e:
            raise fail("okws", "access_log_fields", str(e)) from None

    if "proxy_trusted" in okws:
        trusted = tuple(okws["proxy_trusted"].split())
        try:
            trusted_networks(trusted)
        except ValueError as e:
            raise fail("okws", "proxy_trusted", str(e)) from None
        site["proxy_trusted"] = trusted

    services = []
    for section in parser.sections():
        if section.startswith(_SERVICE_PREFIX):
            services.append(_parse_service(parser[section], section, fail))
    site["services"] = tuple(services)
    return SiteConfig(**site)


def _check_pairs(site: dict[str, Any], okws: Any, fail: Any) -> None:
    """Cross-key checks, blaming the key the operator actually wrote."""
    defaults = {f.name: f.default for f in dataclasses.fields(SiteConfig)}

    def value(key: str) -> Any:
        return site.get(key, defaults[key])

    def shown(key: str) -> str:
        return okws[key] if key in okws else f"{value(key):g}"

    for low, high, why in (
        ("restart_delay_min", "restart_delay_max", ""),
        ("max_request_line", "max_head", ", which would answer 431 before 414"),
        ("resume_connections", "max_connections", ""),
    ):
        if value(low) > value(high):
            key, other = (high, low) if high in okws and low not in okws else (low, high)
            relation = "above" if key == low else "below"
            raise fail("okws", key, f"{shown(key)} is {relation} {other} ({shown(other)}){why}")


def _parse_service(section: Any, name: str, fail: Any) -> ServiceConfig:
    _check_keys(section, name, _SERVICE_KEYS, _OKWS_KEYS, "[okws]", fail)
    service_name = name[len(_SERVICE_PREFIX):]
    kwargs: dict[str, Any] = {"name": service_name}
    for key, example in (("resource", "package.module:Class"), ("paths", "/hello /hi")):
        if key not in section:
            raise fail(name, key, f"missing; expected {example}")
    kwargs["resource"] = section["resource"]
    kwargs["paths"] = tuple(section["paths"].split())
    if "network" in section:
        kwargs["network"] = section["network"].strip()
    for key in ("scratch", "lazy"):
        if key in section:
            word = section[key].strip().lower()
            if word not in _BOOL_WORDS:
                raise fail(name, key, f"expected yes or no, got {section[key]!r}")
            kwargs[key] = _BOOL_WORDS[word]
    for key, number in _SERVICE_NUMBERS.items():
        if key in section:
            try:
                kwargs[key] = number.convert(section[key])
            except _FieldError as e:
                raise fail(name, key, e.message) from None
            problem = number.check(kwargs[key], section[key])
            if problem:
                raise fail(name, key, problem)
    try:
        return ServiceConfig(**kwargs)
    except _FieldError as e:
        raise fail(name, e.key, e.message) from None


def _read_ini(text: str, file: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=("#", ";"),  # only after whitespace: " #" or " ;"
        # Blank and comment lines inside a multi-line value keep it going, so a list of
        # listeners or paths can carry comments; values are split on whitespace anyway.
        empty_lines_in_values=True,
        # No section is special: a [DEFAULT] section is just an unknown one.
        default_section="\n",
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text, source=file)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(
            file, e.section, None, f"line {e.lineno}: this section appears twice"
        ) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            file, e.section, e.option, f"line {e.lineno}: this key appears twice in the section"
        ) from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            file, None, None, f"line {e.lineno}: {e.line.strip()!r} comes before any [section]"
        ) from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]
        try:  # configparser stores each bad line as its repr()
            line = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            pass
        raise ConfigError(
            file, _section_at(text, lineno), None,
            f"line {lineno}: cannot parse {line.strip()!r}; expected [section], key = value, "
            "an indented continuation line or a comment",
        ) from None
    except configparser.Error as e:  # pragma: no cover - no other error is raised by reading
        raise ConfigError(file, None, None, str(e)) from None
    return parser


def _section_at(text: str, lineno: int) -> str | None:
    """The section a line number falls in, for errors configparser reports without one."""
    section = None
    for line in text.splitlines()[: lineno - 1]:
        match = re.fullmatch(r"\[(.+)\]", line.split(" #")[0].split(" ;")[0].strip())
        if match:
            section = match.group(1)
    return section


def _check_keys(
    section: Any, name: str, valid: tuple[str, ...], elsewhere: tuple[str, ...],
    where_else: str, fail: Any,
) -> None:
    for key in section:
        if key in valid:
            continue
        if key in elsewhere:
            raise fail(name, key, f"unknown key here; {key} belongs in {where_else}")
        raise fail(name, key, "unknown key" + _suggest(key, valid))


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return f"; did you mean {lowered[word.lower()]}?"
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _suggest_section(section: str) -> str:
    allowed = " (sections are [okws] and [service:NAME])"
    head, colon, rest = section.partition(":")
    if colon and difflib.get_close_matches(head.strip().lower(), ["service"], n=1):
        return f"; did you mean [service:{rest.strip()}]?{allowed}"
    if not colon and difflib.get_close_matches(section.strip().lower(), ["okws"], n=1):
        return f"; did you mean [okws]?{allowed}"
    return allowed
