# -*- test-case-name: tests.wire.test_certs -*-
"""
Which certificate a C{tls:} listener shows for a name: the TLS front's choice, as the dispatcher
needs to know it to answer C{421 Misdirected Request} (OKWS's okssld had one certificate).

The TLS front chooses a certificate by the client's SNI name (L{choose}, the one rule both
processes use).  A browser may reuse a TLS connection for another host whose name the
connection's certificate also covers, and only then; a request on a connection whose
certificate would not be shown for the request's host must be refused with 421 (RFC 9110
section 15.5.20), so that one certificate's connection never carries another's host.  The
front alone reads the certificates (the files hold the keys), so it tells the dispatcher,
per C{tls:} listener, which names map to which certificate (a ``certs`` message on the
``tls`` channel, sent when the channel is new and after each reading of the directory) and,
with each connection, the certificate it chose (the ``conn`` message's C{listener} and
C{cert}).  The dispatcher keeps a L{CertificateTable} per listener and front, and compares
C{table.cert_for(host)} with the connection's certificate.

The front is a less privileged process than the dispatcher (it parses TLS from anyone):
L{parse_certs} bounds and checks what it says.  Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from okws_twisted.wire.channel import ChannelError, Message

__all__ = ["CERTS", "CERTS_MAX", "CertificateTable", "certs_message", "choose", "parse_certs"]

#: The kind of the front's message naming a listener's certificates.
CERTS = "certs"
#: The largest C{certs} payload (JSON), about 20,000 names.
CERTS_MAX = 1 << 20
#: The longest DNS name (RFC 1035), and so the longest key of a table.
MAX_NAME = 255

T = TypeVar("T")


def choose(names: Mapping[str, T], name: str) -> T | None:
    """What C{names} maps C{name} to: the name itself, else its first label replaced by C{*}.

    C{name} is compared in lower case without a final dot; L{None} if neither is there (the
    caller falls back to its default).  The TLS front's rule (as Twisted's C{tls:} endpoint):
    a wildcard certificate covers exactly one label.
    """
    name = name.lower().rstrip(".")
    found = names.get(name)
    if found is None and "." in name:
        found = names.get("*." + name.split(".", 1)[1])
    return found


class CertificateTable:
    """One C{tls:} listener's certificates as ids: C{names} (name -> id) and the C{default}."""

    __slots__ = ("names", "default", "ids")

    def __init__(self, names: dict[str, int], default: int) -> None:
        self.names = names
        self.default = default
        self.ids = frozenset(names.values()) | {default}

    def cert_for(self, host: bytes) -> int:
        """The certificate the front would show a client asking for C{host} (a routing host key)."""
        found = choose(self.names, host.decode("ascii", "replace"))
        return self.default if found is None else found

    def __repr__(self) -> str:
        return f"CertificateTable({self.names!r}, default={self.default!r})"


def certs_message(listener: int, names: Mapping[str, int], default: int) -> tuple[dict[str, Any], bytes]:
    """The metadata and payload of a C{certs} message for the front's C{listener}-th TLS listener."""
    payload = json.dumps({"names": dict(names), "default": default}, separators=(",", ":")).encode("ascii")
    return {"k": CERTS, "listener": listener}, payload


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def parse_certs(msg: Message) -> tuple[int, CertificateTable]:
    """The listener index and table of a C{certs} message; raise L{ChannelError}.

    The caller checks the index against its own list of listeners.
    """
    if msg.fds or msg.fds_lost:
        raise ChannelError("certs message with descriptors")
    listener = msg.meta.get("listener")
    if not _is_id(listener):
        raise ChannelError("certs message without a valid listener")
    if len(msg.payload) > CERTS_MAX:
        raise ChannelError(f"certs message of {len(msg.payload)} bytes")
    try:
        document = json.loads(msg.payload)
    except ValueError:
        raise ChannelError("certs message is not JSON") from None
    if not isinstance(document, dict):
        raise ChannelError("certs message is not an object")
    names, default = document.get("names"), document.get("default")
    if not isinstance(names, dict) or not _is_id(default):
        raise ChannelError("certs message without names or a default")
    for name, cert in names.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isascii() or not _is_id(cert):
            raise ChannelError(f"bad certs entry {name!r}: {cert!r}")
    return listener, CertificateTable(names, default)
