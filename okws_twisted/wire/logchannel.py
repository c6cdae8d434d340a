# -*- test-case-name: tests.wire.test_logsender -*-
"""
The log protocol between every okws process and the log daemon (OKWS's oklogd RPC).

Each sender (the launcher, the dispatcher, every service instance) holds one
L{okws_twisted.wire.channel.MessageChannel} to the daemon, made by the launcher,
which also tells the daemon who is at the other end (the ``peer`` message):
a sender cannot claim to be someone else.  Message kinds:

``records`` (sender -> daemon)
    C{first}: the sequence number of the first record; payload: a JSON array
    of records (objects, see L{okws_twisted.logd.format}) numbered
    C{first}, C{first + 1}, ...  Sequence numbers start at 1 in each sender
    process and have no gaps.  A batch is sent every 50 ms or every 256
    records, whichever comes first; after a new channel arrives, every
    unacknowledged batch is sent again.
``ack`` (daemon -> sender)
    C{seq}: every record up to this number is in the log files; the sender
    may forget them.
``reopen`` (launcher -> daemon)
    Close and reopen the log files (after an external rotation).  Only the
    launcher's channel may send it.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Sequence, Tuple, Union

from okws_twisted.wire.channel import ChannelError, Message

RECORDS = "records"
ACK = "ack"
REOPEN = "reopen"

#: The channel kind in the launcher's ``peer`` messages.
CHANNEL = "log"


#: How records are encoded (compact, UTF-8 text as is).
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

#: A service's access record as its raw values, kept as they are until its batch is sealed
#: (L{okws_twisted.wire.logsender.RecordSender.access}, encoded by L{access_text}):
#: C{(started, now, client, method, uri, proto, status, sent, request_id, referer, agent, tls, host)}.
AccessValues = Tuple[
    float, float, str, bytes, bytes, bytes, int, int, str,
    Union[Sequence[bytes], None], Union[Sequence[bytes], None], Union[str, None], Union[bytes, None],
]
#: What a sender queues: a record (a dict), its JSON text, or an access record's raw values.
Record = Union[dict, str, AccessValues]


def access_text(
    started: float,
    now: float,
    client: str,
    method: bytes,
    uri: bytes,
    proto: bytes,
    status: int,
    sent: int,
    request_id: str,
    referer: Sequence[bytes] | None,
    agent: Sequence[bytes] | None,
    tls: str | None,
    host: bytes | None,
) -> str:
    """A service's access record as JSON text (see L{okws_twisted.wire.logrecord.ACCESS_RECORD}).

    C{started}, C{now}: the reactor's seconds when the request arrived and when its response
    ended; C{method}, C{uri}, C{proto}: the request line's parts as received; C{referer},
    C{agent}: the raw values of those headers (as C{Headers.getRawHeaders} returns them; the
    first is logged) or L{None}; C{tls}: the connection's L{okws_twisted.wire.handoff.tls_summary}
    or L{None}; C{host}: the routing host or L{None}.  Bytes are taken as latin-1 (every byte
    one character, as the daemon expects); C{encode_basestring} is json's own escaping, in C.
    """
    quote = encode_basestring
    line = (method + b" " + uri + b" " + proto).decode("latin-1")
    return (
        f'{{"kind":"access","time":{int(started * 1_000_000)},"client":{quote(client)},"request":{quote(line)},'
        f'"status":{status},"bytes":{sent},"request_id":{quote(request_id)},'
        f'"response_time":{max(0, int((now - started) * 1_000_000))}'
        + (f',"referer":{quote(referer[0].decode("latin-1"))}' if referer else "")
        + (f',"user_agent":{quote(agent[0].decode("latin-1"))}' if agent else "")
        + (f',"tls":{quote(tls)}' if tls is not None else "")
        + (f',"host":{quote(host.decode("latin-1"))}' if host is not None else "")
        + "}"
    )


def encode_records(records: list[Record]) -> bytes:
    """The payload of a C{records} message: a JSON array of the records.

    A record is a dict, a dict already encoded as JSON text, or a service's access
    record as its raw values (L{AccessValues}), encoded here, in one loop per batch, rather
    than on the request path where each one would run with cold caches.
    """
    encode = _RECORD_ENCODER.encode
    parts = [
        r if type(r) is str else access_text(*r) if type(r) is tuple else encode(r)  # type: ignore[arg-type]
        for r in records
    ]
    return ("[" + ",".join(parts) + "]").encode("utf-8")


def records_meta(first: int) -> dict[str, Any]:
    return {"k": RECORDS, "first": first}


def parse_records(msg: Message) -> tuple[int, list[Any]]:
    """The first sequence number and the (unchecked) records of a C{records} message."""
    return records_first(msg), records_list(msg)


def records_first(msg: Message) -> int:
    """The first sequence number of a C{records} message (every way of reading its records checks it here)."""
    first = msg.meta.get("first")
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise ChannelError(f"records message with a bad first sequence number {first!r}")
    return first


def records_list(msg: Message) -> list[Any]:
    """The (unchecked) records of a C{records} message, decoded as JSON."""
    try:
        records = json.loads(msg.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ChannelError(f"records message that is not a JSON array: {e}") from None
    if not isinstance(records, list):
        raise ChannelError("records message that is not a JSON array")
    return records


def ack_meta(seq: int) -> dict[str, Any]:
    return {"k": ACK, "seq": seq}


def parse_ack(msg: Message) -> int:
    seq = msg.meta.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ChannelError(f"ack with a bad sequence number {seq!r}")
    return seq
