# -*- test-case-name: tests.test_handoff -*-
"""
The connection handoff protocol between dispatcher and services (OKWS's okd->service fd passing).

Crossed once per client connection, in both directions, over a
L{okws_twisted.channel.MessageChannel}.  Message kinds:

``conn`` (dispatcher -> service), with one fd
    A client connection: C{id}, client address C{peer}, local address
    C{host}, and as payload every byte the dispatcher already read.  The
    first request in the payload has been routed to this service.
``ack`` (service -> dispatcher)
    C{ids}: connections the service now holds (the dispatcher closes its
    copies); C{done}: how many of its connections have ended (closed or
    handed back) since its last report, for least-busy balancing.
    A service sends one ``ack`` per wakeup for the whole batch, *before* it
    starts serving them, so a connection that was never acknowledged was
    never touched and the dispatcher may give it to another instance.
``back`` (service -> dispatcher), with one fd
    A kept-alive connection whose next request belongs elsewhere: C{id},
    C{peer}, C{host}, and as payload every unread byte, starting with that
    request.
``backack`` (dispatcher -> service)
    C{ids}: handed-back connections the dispatcher now holds.
``stats`` (service -> dispatcher)
    Cumulative counters for the admin listener's metrics: C{counts} (see
    L{okws_twisted.metrics.RequestCounts}), C{in_flight}, C{connections}.
    Sent at most once a second, and only when something changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IAddress

from okws_twisted.channel import ChannelError, Message
from okws_twisted.transport import address_from_wire, address_to_wire

CONN = "conn"
ACK = "ack"
BACK = "back"
BACKACK = "backack"
STATS = "stats"


@dataclass(frozen=True)
class Connection:
    """A client connection in transit: its fd, addresses and unread bytes."""

    id: int
    fd: int
    peer: IAddress
    host: IAddress
    data: bytes


def connection_meta(kind: str, conn_id: int, peer: IAddress, host: IAddress) -> dict[str, Any]:
    """The metadata of a C{conn} or C{back} message."""
    return {"k": kind, "id": conn_id, "peer": address_to_wire(peer), "host": address_to_wire(host)}


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
    return Connection(conn_id, msg.fds[0], peer, host, msg.payload)


def parse_ids(msg: Message) -> list[int]:
    """The C{ids} of an C{ack} or C{backack} message."""
    ids = msg.meta.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ChannelError(f"bad {msg.kind} ids")
    return ids
