# -*- test-case-name: tests.wire.test_handoff -*-
"""
The connection handoff protocol between dispatcher and services (OKWS's okd->service fd passing).

Crossed once per client connection, in both directions, over a
L{okws_twisted.wire.channel.MessageChannel}.  Message kinds:

``conn`` (dispatcher -> service), with one fd
    A client connection: C{id}, client address C{peer}, local address
    C{host}, and as payload every byte the dispatcher already read.  The
    first request in the payload has been routed to this service.  A
    connection that came through the TLS front also carries C{tls}: the
    facts of its TLS session (L{TLS_FACTS}), all strings.
``ack`` (service -> dispatcher)
    C{ids}: connections the service now holds (the dispatcher closes its
    copies); C{done}: how many of its connections have ended (closed or
    handed back) since its last report, for least-busy balancing.
    A service sends one ``ack`` per wakeup for the whole batch, *before* it
    starts serving them, so a connection that was never acknowledged was
    never touched and the dispatcher may give it to another instance.
``back`` (service -> dispatcher), with one fd
    A kept-alive connection whose next request belongs elsewhere: C{id},
    C{peer}, C{host}, C{tls} if it had it, and as payload every unread byte,
    starting with that request.
``backack`` (dispatcher -> service)
    C{ids}: handed-back connections the dispatcher now holds.
``stats`` (service -> dispatcher)
    Cumulative counters for the admin listener's metrics: C{counts} (see
    L{okws_twisted.dispatcher.metrics.RequestCounts}), C{in_flight}, C{connections}.
    Sent at most once a second, and only when something changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IAddress

from okws_twisted.wire.channel import ChannelError, Message
from okws_twisted.wire.transport import address_from_wire, address_to_wire

CONN = "conn"
ACK = "ack"
BACK = "back"
BACKACK = "backack"
STATS = "stats"

#: The TLS facts a connection from the TLS front carries (L{Connection.tls}):
#: the SNI name the client asked for ("" if none), the cipher suite, the
#: protocol version (C{TLSv1.3}) and the ALPN protocol ("" if none).
TLS_FACTS = ("sni", "cipher", "version", "alpn")


@dataclass(frozen=True)
class Connection:
    """A client connection in transit: its fd, addresses and unread bytes."""

    id: int
    fd: int
    peer: IAddress
    host: IAddress
    data: bytes
    tls: dict[str, str] | None = None


def connection_meta(
    kind: str, conn_id: int, peer: IAddress, host: IAddress, tls: dict[str, str] | None = None
) -> dict[str, Any]:
    """The metadata of a C{conn} or C{back} message."""
    meta = {"k": kind, "id": conn_id, "peer": address_to_wire(peer), "host": address_to_wire(host)}
    if tls is not None:
        meta["tls"] = tls
    return meta


def tls_summary(tls: dict[str, str]) -> str:
    """The access log's C{tls} field: C{TLSv1.3/TLS_AES_256_GCM_SHA384}."""
    return f"{tls.get('version') or '-'}/{tls.get('cipher') or '-'}"


def parse_tls(value: object) -> dict[str, str] | None:
    """Validate the C{tls} facts of a message; raise L{ChannelError} if malformed."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != set(TLS_FACTS)
        or not all(isinstance(v, str) and len(v) <= 255 for v in value.values())
    ):
        raise ChannelError(f"bad tls facts {value!r}")
    return value


def parse_connection(msg: Message) -> Connection:
    """Validate a C{conn} or C{back} message; raise L{ChannelError} if malformed.

    On error the caller still owns (and must close) C{msg.fds}.
    """
    if len(msg.fds) != 1:
        raise ChannelError(f"{msg.kind} message with {len(msg.fds)} fds")
    try:
        conn_id = int(msg.meta["id"])
        peer = address_from_wire(msg.meta["peer"])
        host = address_from_wire(msg.meta["host"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ChannelError(f"bad {msg.kind} message: {e!r}") from None
    return Connection(conn_id, msg.fds[0], peer, host, msg.payload, parse_tls(msg.meta.get("tls")))


def parse_ids(msg: Message) -> list[int]:
    """The C{ids} of an C{ack} or C{backack} message."""
    ids = msg.meta.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ChannelError(f"bad {msg.kind} ids")
    return ids
