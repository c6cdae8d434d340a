# -*- test-case-name: tests.test_config -*-
"""The site's listeners: Twisted endpoint strings the launcher opens and the dispatcher or the
TLS front inherits, and the networks trusted to send a PROXY protocol header.

Pure logic, stdlib only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PROXY_TRUSTED",
    "Listener",
    "PROXY_PREFIX",
    "WILDCARD",
    "is_trusted",
    "parse_listener",
    "trusted_networks",
]

#: The listener used when [okws] has no ``listen`` key: loopback only, so a development site
#: is not exposed to the network by accident.
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_SUPPORTED_KINDS = ("tcp", "tcp6", "unix", "systemd")
#: A C{systemd:} listener's address family, as Twisted's C{systemd:} endpoint spells it.
SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")
#: Twisted's spelling of a PROXY protocol listener: ``haproxy:`` before the endpoint.
PROXY_PREFIX = "haproxy:"
#: The default of [okws] proxy_trusted: the load balancer runs on this host.
DEFAULT_PROXY_TRUSTED = ("127.0.0.1", "::1")
#: The address each TCP kind binds when no interface is given.
WILDCARD = {"tcp": "0.0.0.0", "tcp6": "::"}




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
    #: A C{systemd:} listener (socket activation): the inherited socket's address family
    #: (one of L{SYSTEMD_DOMAINS}), and either its index among the sockets systemd
    #: passed (C{LISTEN_FDS}) or its name (C{LISTEN_FDNAMES}, the unit's C{FileDescriptorName}).
    domain: str | None = None
    fd_index: int | None = None
    fd_name: str | None = None

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
        if self.tls and (self.kind in ("unix", "systemd") or self.proxy):
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
        elif self.kind == "systemd":
            self._check_systemd()
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
            object.__setattr__(self, "interface", WILDCARD[self.kind])
        family = ipaddress.IPv4Address if self.kind == "tcp" else ipaddress.IPv6Address
        try:
            # One spelling per address, so SiteConfig finds overlapping listeners.
            object.__setattr__(self, "interface", str(family(self.interface)))
        except ValueError:
            want = "an IPv4 address like 127.0.0.1" if self.kind == "tcp" else (
                "an IPv6 address like \\:\\:1 (escape each ':' as '\\:')"
            )
            raise ValueError(f"interface must be {want}, got {self.interface!r}") from None

    def _check_systemd(self) -> None:
        if self.port is not None or self.interface or self.path is not None or self.mode != 0o666:
            raise ValueError("a systemd listener has a domain and an index or a name, nothing else")
        if self.domain not in SYSTEMD_DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(SYSTEMD_DOMAINS)}, got {self.domain!r}")
        if (self.fd_index is None) == (self.fd_name is None):
            raise ValueError("a systemd listener needs index=N or name=NAME (one of them)")
        if self.fd_index is not None and (isinstance(self.fd_index, bool) or not isinstance(self.fd_index, int)
                                          or not 0 <= self.fd_index < 1024):
            raise ValueError(f"index must be a whole number from 0 to 1023, got {self.fd_index!r}")
        if self.fd_name is not None and (not isinstance(self.fd_name, str)
                                         or not re.fullmatch(r"[\x21-\x7e]{1,255}", self.fd_name) or ":" in self.fd_name):
            raise ValueError(f"name must be the socket unit's FileDescriptorName (printable, no ':'), got {self.fd_name!r}")

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
        if self.kind == "systemd":
            which = f"index={self.fd_index}" if self.fd_index is not None else f"name={_escape(self.fd_name or '')}"
            return f"{prefix}systemd:domain={self.domain}:{which}"
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
        if self.kind == "systemd":
            return ("systemd", self.fd_index if self.fd_index is not None else self.fd_name)
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
    "systemd": ("domain", "index", "name"),
}


_FIRST_FIELD = {"unix": "socket path", "systemd": "domain (domain=INET, INET6 or UNIX)"}


def parse_listener(description: str, base_dir: str) -> Listener:
    """Parse one listener endpoint string; a relative unix path resolves against C{base_dir}.

    Accepts the subset of Twisted endpoint strings okws can serve now, each optionally
    behind Twisted's C{haproxy:} prefix (PROXY protocol v1 or v2 first on every connection):
    C{tcp:PORT[:interface=ADDR][:backlog=N]}, C{tcp6:...} likewise, and
    C{unix:PATH[:mode=666][:backlog=N]}, the TLS forms C{ssl:PORT:privateKey=KEY[:certKey=CHAIN]...}
    and C{tls:PORT:path=DIR...} (the certificate chosen by SNI from a directory of PEM files),
    C{systemd:domain=INET:index=N} or C{systemd:domain=INET:name=NAME} (socket activation),
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
        raise ValueError(f"missing the {_FIRST_FIELD.get(kind, 'port')}")

    kwargs: dict[str, Any] = {"kind": kind, "description": description, "proxy": proxy}
    if kind == "systemd":
        # Socket activation, as Twisted's systemd: endpoint: the launcher listens on
        # nothing itself and takes the socket systemd passed it.
        kwargs["domain"] = named["domain"]
        if "index" in named:
            kwargs["fd_index"] = _listener_int("index", named["index"])
        if "name" in named:
            kwargs["fd_name"] = named["name"]
        return Listener(**kwargs)
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



def trusted_networks(texts: tuple[str, ...] | list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The networks of C{proxy_trusted}; raise C{ValueError} naming a bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise ValueError(f"{text!r} is not an address or a network like 10.0.0.0/8 ({e})") from None
    return tuple(networks)


def is_trusted(host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether a peer's address (text, as Twisted gives it) is in C{networks}.

    An IPv4-mapped IPv6 address (a v4 client on a dual-stack tcp6 listener)
    counts as its IPv4 address.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)
