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
    facts of its TLS session (L{TLS_FACTS}), all strings.  With C{relay}
    true (a service with C{isolation = request}) the fd is not the client's
    socket but the service's end of a socket pair over which the dispatcher
    relays that client's requests for this service and host, one at a time,
    and the payload is the first of them (its head and the body bytes already
    read); C{peer}, C{host} and C{tls} are still the client's.  Such a
    connection is never handed back: it ends when the dispatcher closes its
    end.
``conns`` (dispatcher -> service), with 2 to L{MAX_BATCH} fds
    Several client connections accepted at one wakeup of the dispatcher, for
    the same instance: C{c}, one entry C{[id, peer, host, size]} per fd, in
    the fds' order, and as payload their unread bytes one after another
    (C{size} bytes each; together no more than one C{conn} message's
    payload).  Only plain TCP connections (no TLS facts, not relayed) ride in
    one; each is then what a C{conn} message would have said.  If any fd
    failed to arrive, the service refuses them all.
``ack`` (service -> dispatcher)
    C{ids}: connections the service now holds (the dispatcher closes its
    copies); C{refused}: connections it will not take (it is at its
    connection cap, or out of descriptors so the fd never arrived): the
    dispatcher, which still holds them, answers them C{503}; C{closed}:
    connections it held that have ended (not handed back) since its last
    report, so the dispatcher forgets them.
    A service sends one ``ack`` per wakeup for the whole batch, *before* it
    starts serving them, so a connection that was never acknowledged was
    never touched and the dispatcher may give it to another instance.
``back`` (service -> dispatcher), with one fd
    A kept-alive connection whose next request belongs elsewhere: C{id}, the
    dispatcher's id from the ``conn`` message that handed it over, and as
    payload every unread byte, starting with that request.  The dispatcher
    takes it back only if it handed that very socket (same C{SO_COOKIE}) to
    this instance under that id and has not had it back since; its client
    address and TLS facts are the dispatcher's own record, never the
    service's word (L{okws_twisted.dispatcher.records}).
``backack`` (dispatcher -> service)
    C{ids}: handed-back connections the dispatcher now holds; C{refused}:
    handbacks it did not take (it closed its copy).  Either way the service
    closes its own copy.
``stats`` (service -> dispatcher)
    Cumulative counters for the admin listener's metrics: C{counts}, by host
    pattern (see L{okws_twisted.wire.counts}; the dispatcher keeps only its
    service's own patterns), C{in_flight}, C{connections},
    and C{conn_cap}: the most connections the instance takes (from its
    descriptor limit).  Sent at once on a new channel, then at most once a
    second, and only when something changed.

Only ``conn``, ``conns`` and ``back`` carry descriptors (L{FDS}) and a
payload; any other message carrying either is refused (its descriptors
closed).  Sizes: see
L{okws_twisted.wire.limits.handoff}.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.internet.interfaces import IAddress

from okws_twisted.wire.channel import MAX_FDS, ChannelError, Message
from okws_twisted.wire.transport import address_from_wire, address_to_wire

CONN = "conn"
CONNS = "conns"
ACK = "ack"
BACK = "back"
BACKACK = "backack"
STATS = "stats"

#: The most connections one C{conns} message carries: as many fds as a channel message takes.
MAX_BATCH = MAX_FDS
#: How many fds each kind carries (the fewest, the most); any other count is refused.
FDS = {CONN: (1, 1), CONNS: (2, MAX_BATCH), BACK: (1, 1), ACK: (0, 0), BACKACK: (0, 0), STATS: (0, 0)}

#: The TLS facts a connection from the TLS front carries (L{Connection.tls}):
#: the SNI name the client asked for ("" if none), the cipher suite, the
#: protocol version (C{TLSv1.3}) and the ALPN protocol ("" if none).
TLS_FACTS = ("sni", "cipher", "version", "alpn")


class Connection(NamedTuple):
    """A client connection in transit: its fd, addresses and unread bytes.

    A named tuple: one is made per connection an instance adopts (a frozen dataclass costs four
    times as much to build).
    """

    id: int
    fd: int
    peer: IAddress
    host: IAddress
    data: bytes
    tls: dict[str, str] | None = None
    #: A socket pair the dispatcher relays requests over (C{isolation = request}).
    relay: bool = False


def connection_meta(
    kind: str, conn_id: int, peer: IAddress, host: IAddress, tls: dict[str, str] | None = None, relay: bool = False
) -> dict[str, Any]:
    """The metadata of a C{conn} message."""
    meta: dict[str, Any] = {"k": kind, "id": conn_id, "peer": address_to_wire(peer), "host": address_to_wire(host)}
    if tls is not None:
        meta["tls"] = tls
    if relay:
        meta["relay"] = True
    return meta


def back_meta(conn_id: int) -> dict[str, Any]:
    """The metadata of a C{back} message: the id alone (the dispatcher knows the rest)."""
    return {"k": BACK, "id": conn_id}


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


def check_shape(msg: Message) -> None:
    """Refuse a message whose kind carries another number of fds (L{FDS}), or a payload it has none of."""
    want = FDS.get(msg.kind)
    if want is None:
        raise ChannelError(f"unexpected {msg.kind!r} message")
    fewest, most = want
    if not fewest <= len(msg.fds) <= most or msg.fds_lost:
        raise ChannelError(f"{msg.kind} message with {len(msg.fds)} fds{' (some lost)' if msg.fds_lost else ''}")
    if msg.payload and not most:
        raise ChannelError(f"{msg.kind} message with a {len(msg.payload)}-byte payload")


def message_id(msg: Message) -> int:
    """The C{id} of a C{conn} or C{back} message."""
    conn_id = msg.meta.get("id")
    if not isinstance(conn_id, int) or isinstance(conn_id, bool) or conn_id < 0:
        raise ChannelError(f"{msg.kind} message without a valid id")
    return conn_id


def parse_back(msg: Message) -> tuple[int, int, bytes]:
    """The id, fd and unread bytes of a C{back} message; raise L{ChannelError}.

    Anything else the message says (an address, TLS facts) is ignored: those
    are the dispatcher's own facts.  On error the caller still owns (and must
    close) C{msg.fds}.
    """
    check_shape(msg)
    return message_id(msg), msg.fds[0], msg.payload


def parse_connection(msg: Message) -> Connection:
    """Validate a C{conn} message; raise L{ChannelError} if malformed.

    On error the caller still owns (and must close) C{msg.fds}.
    """
    check_shape(msg)
    try:
        conn_id = message_id(msg)
        peer = address_from_wire(msg.meta["peer"])
        host = address_from_wire(msg.meta["host"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ChannelError(f"bad {msg.kind} message: {e!r}") from None
    return Connection(
        conn_id, msg.fds[0], peer, host, msg.payload, parse_tls(msg.meta.get("tls")), msg.meta.get("relay") is True
    )


def batch_meta(entries: list[list[Any]]) -> dict[str, Any]:
    """The metadata of a C{conns} message: C{entries} from L{batch_entry}, in the fds' order."""
    return {"k": CONNS, "c": entries}


def batch_entry(conn_id: int, peer: IAddress, host: IAddress, size: int) -> list[Any]:
    """One connection of a C{conns} message, whose unread bytes are C{size} bytes of its payload."""
    return [conn_id, address_to_wire(peer), address_to_wire(host), size]


def batch_ids(msg: Message) -> list[int]:
    """The ids of a C{conns} message's connections; raise L{ChannelError} if its entries are not
    a list of up to L{MAX_BATCH} entries that each start with a valid id."""
    entries = msg.meta.get("c")
    if not isinstance(entries, list) or not 2 <= len(entries) <= MAX_BATCH:
        raise ChannelError("conns message without a valid list of connections")
    ids = []
    for entry in entries:
        conn_id = entry[0] if isinstance(entry, list) and entry else None
        if not isinstance(conn_id, int) or isinstance(conn_id, bool) or conn_id < 0:
            raise ChannelError("conns message with an entry without a valid id")
        ids.append(conn_id)
    return ids


def parse_batch(msg: Message) -> list[Connection]:
    """Validate a C{conns} message: its connections, in order; raise L{ChannelError} if malformed.

    On error the caller still owns (and must close) C{msg.fds}.
    """
    check_shape(msg)
    ids = batch_ids(msg)
    if len(ids) != len(msg.fds):
        raise ChannelError(f"conns message with {len(ids)} connections and {len(msg.fds)} fds")
    payload = msg.payload
    out = []
    start = 0
    try:
        for conn_id, fd, (_id, peer, host, size) in zip(ids, msg.fds, msg.meta["c"]):
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"size {size!r}")
            end = start + size
            out.append(Connection(conn_id, fd, address_from_wire(peer), address_from_wire(host), payload[start:end]))
            start = end
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ChannelError(f"bad conns message: {e!r}") from None
    if start != len(payload):
        raise ChannelError(f"conns message whose sizes add up to {start}, not its {len(payload)}-byte payload")
    return out


def parse_ids(msg: Message, key: str = "ids") -> list[int]:
    """A list of ids of an C{ack} or C{backack} message (C{ids}, C{refused}, C{closed})."""
    ids = msg.meta.get(key, [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ChannelError(f"bad {msg.kind} {key}")
    return ids
