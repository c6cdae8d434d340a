# -*- test-case-name: tests.wire.test_dbchannel -*-
"""
The database protocol between a service instance and its database proxy (OKWS's ezdb RPC).

One L{okws_twisted.wire.channel.MessageChannel} joins each service instance
that has a C{db} to that database's proxy; the launcher wires it, and the
proxy knows the caller by the channel (the launcher's C{peer} message names
the service), never by anything a message says.  Both sides batch:
everything queued in one reactor turn leaves as one message.  Message kinds,
each accepted only from the side that may send it:

``grants`` (proxy -> service), first on every channel
    Payload: C{{name: [suffix, [param, ...]]}}, the queries this service may
    run (nothing about the others, and no SQL).  The client refuses other
    names and wrong parameter sets itself, before sending.
``calls`` (service -> proxy)
    Payload: a JSON list of C{[id, name, params]}: C{id} the caller's number
    (unique per channel, increasing), C{params} an object of wire values
    (L{okws_twisted.wire.dbvalues}), or for a C{*!} query a list of them.
``replies`` (proxy -> service)
    Payload: a JSON list of C{[id, "ok", result]} or C{[id, ERROR, message]},
    ERROR one of L{ERRORS}.  Every call gets exactly one reply while the
    channel lives; a call in flight when the channel dies gets none (the
    client fails it: it may or may not have run, and it is never resent).

Limits, each checked before anything is buffered or parsed further:

    - the channel's C{max_payload}: on the proxy's end, a C{calls} message
      of at most the database's C{max_call_bytes} (L{proxy_limit}); on the
      service's end, a C{replies} message of at most C{max_result_bytes}
      plus L{REPLY_SLACK} (L{service_limit}).  A larger declared payload
      closes that channel only (the proxy keeps serving every other one);
    - at most L{MAX_BATCH} entries per message, L{MAX_NAME} characters per
      query name, L{MAX_MESSAGE} characters per error message;
    - the sender splits its batches to stay within the receiver's limits, so
      a well-behaved peer never meets them.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from okws_twisted.wire import dbvalues
from okws_twisted.wire.channel import ChannelError, Message, register_kinds

#: The kind of channel in the launcher's C{peer} message.
CHANNEL = "db"

GRANTS = "grants"
CALLS = "calls"
REPLIES = "replies"

# A call's and a reply's message carries nothing but its kind: its header skips JSON both ways.
register_kinds(GRANTS, CALLS, REPLIES)

OK = "ok"
#: Not granted, unknown, wrong parameters: L{QueryRefused} for the author.
REFUSED = "refused"
#: Queue full, timed out, the database unreachable: L{DatabaseUnavailable}.
UNAVAILABLE = "unavailable"
#: The database's own error (a constraint, a syntax error): L{QueryFailed}.
FAILED = "failed"
ERRORS = (REFUSED, UNAVAILABLE, FAILED)
_STATUSES = frozenset((OK, *ERRORS))

#: The suffixes of aiosql's query names that can be granted (C{#} scripts cannot).
SUFFIXES = ("", "^", "$", "!", "<!", "*!")

#: Entries in one message at most.
MAX_BATCH = 10_000
#: Longest query name, in characters.
MAX_NAME = 100
#: Longest error message in a reply, in characters (longer ones are cut).
MAX_MESSAGE = 1000
#: What a C{replies} message may carry beyond one result of C{max_result_bytes}:
#: the other entries' ids and statuses, and short error messages.
REPLY_SLACK = 64 * 1024

Outgoing = tuple[dict[str, Any], bytes]


def proxy_limit(max_call_bytes: int) -> int:
    """The proxy's C{max_payload} on a db channel: one C{calls} message at most."""
    return max_call_bytes


def service_limit(max_result_bytes: int) -> int:
    """The service's C{max_payload} on its db channel: one C{replies} message at most."""
    return max_result_bytes + REPLY_SLACK


@dataclass(frozen=True)
class Grant:
    """One query a service may run: its suffix (how to read its result) and parameters."""

    suffix: str
    params: tuple[str, ...]


class Call(NamedTuple):
    """One call as the proxy receives it: shape checked, content not yet.  (Tuples: one is
    built per call, and a frozen dataclass costs several times as much to build.)"""

    id: int
    name: str
    params: Any  # an object of wire values, or a list of them for *!


class Reply(NamedTuple):
    """One answer as the service receives it."""

    id: int
    status: str
    value: Any  # the wire result for OK, else the message


def grants(table: Mapping[str, Grant]) -> Outgoing:
    """The C{grants} message for C{table}."""
    return {"k": GRANTS}, dbvalues.dumps({name: [g.suffix, list(g.params)] for name, g in sorted(table.items())})


def call_entry(call_id: int, name: str, params: Any) -> bytes:
    """One call, encoded: parameters already in wire form (L{dbvalues.check_params}).  The
    service measures each before batching it."""
    return dbvalues.dumps([call_id, name, params])


def calls(entries: Sequence[bytes]) -> Outgoing:
    """The C{calls} message of entries from L{call_entry}."""
    return {"k": CALLS}, b"[" + b",".join(entries) + b"]"


def reply_ok(call_id: int, encoded: bytes) -> bytes:
    """One C{ok} entry, its result already encoded (the proxy encodes in a pool thread and
    measures each result before batching it)."""
    return b"[%d,\"ok\"," % (call_id,) + encoded + b"]"


def reply_error(call_id: int, status: str, message: str) -> bytes:
    """One error entry: C{status} one of L{ERRORS}, the message cut to L{MAX_MESSAGE}."""
    if status not in ERRORS:
        raise ValueError(f"not an error status: {status!r}")
    return dbvalues.dumps([call_id, status, str(message)[:MAX_MESSAGE]])


def replies(entries: Sequence[bytes]) -> Outgoing:
    """The C{replies} message of entries from L{reply_ok} and L{reply_error}."""
    return {"k": REPLIES}, b"[" + b",".join(entries) + b"]"


def _list_payload(msg: Message) -> list[Any]:
    if msg.fds:
        raise ChannelError(f"{msg.kind} message carries file descriptors")
    try:
        body = dbvalues.loads(msg.payload)
    except ValueError as e:
        raise ChannelError(f"{msg.kind} payload is not JSON: {e}") from None
    if type(body) is not list or len(body) > MAX_BATCH:
        raise ChannelError(f"{msg.kind} payload is not a list of at most {MAX_BATCH} entries")
    return body


def parse_calls(msg: Message) -> list[Call]:
    """The calls in a C{calls} message (the proxy's side).

    Only the shape is checked here: whether the name is granted and the
    parameters fit is the proxy's answer to give, per call, as a reply.
    """
    if msg.kind != CALLS:
        raise ChannelError(f"unexpected {msg.kind!r} message from a service")
    out = []
    for entry in _list_payload(msg):
        if type(entry) is not list or len(entry) != 3:
            raise ChannelError("a call is not [id, name, params]")
        call_id, name, params = entry
        if type(name) is not str or not name or len(name) > MAX_NAME:
            raise ChannelError("a call without a valid query name")
        if type(call_id) is not int or call_id < 0:
            raise ChannelError("an entry without a valid id")
        out.append(Call(call_id, name, params))
    return out


def parse_replies(msg: Message) -> list[Reply]:
    """The answers in a C{replies} message (the service's side)."""
    if msg.kind != REPLIES:
        raise ChannelError(f"unexpected {msg.kind!r} message from the proxy")
    out = []
    for entry in _list_payload(msg):
        if type(entry) is not list or len(entry) != 3 or entry[1] not in _STATUSES:
            raise ChannelError("a reply is not [id, status, value]")
        call_id, status, value = entry
        if status != OK and type(value) is not str:
            raise ChannelError("an error reply without a message")
        if type(call_id) is not int or call_id < 0:
            raise ChannelError("an entry without a valid id")
        out.append(Reply(call_id, status, value))
    return out


def parse_grants(msg: Message) -> dict[str, Grant]:
    """The table in a C{grants} message (the service's side)."""
    if msg.fds:
        raise ChannelError("grants message carries file descriptors")
    try:
        body = dbvalues.loads(msg.payload)
    except ValueError as e:
        raise ChannelError(f"grants payload is not JSON: {e}") from None
    if type(body) is not dict:
        raise ChannelError("grants payload is not an object")
    out = {}
    for name, spec in body.items():
        if (
            len(name) > MAX_NAME
            or type(spec) is not list
            or len(spec) != 2
            or spec[0] not in SUFFIXES
            or type(spec[1]) is not list
            or not all(type(p) is str for p in spec[1])
        ):
            raise ChannelError(f"bad grant {name[:MAX_NAME]!r}")
        out[name] = Grant(spec[0], tuple(spec[1]))
    return out
