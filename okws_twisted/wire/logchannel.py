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
from typing import Any

from okws_twisted.wire.channel import ChannelError, Message

RECORDS = "records"
ACK = "ack"
REOPEN = "reopen"

#: The channel kind in the launcher's ``peer`` messages.
CHANNEL = "log"


#: How records are encoded (compact, UTF-8 text as is).
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_records(records: list[dict[str, Any] | str]) -> bytes:
    """The payload of a C{records} message: a JSON array of the records.

    A record is a dict, or a dict already encoded as JSON text (a service's
    access records are built as text on the request path: see
    L{okws_twisted.service.web.ServiceSite.log}).
    """
    encode = _RECORD_ENCODER.encode
    return ("[" + ",".join(r if type(r) is str else encode(r) for r in records) + "]").encode("utf-8")


def records_meta(first: int) -> dict[str, Any]:
    return {"k": RECORDS, "first": first}


def parse_records(msg: Message) -> tuple[int, list[Any]]:
    """The first sequence number and the (unchecked) records of a C{records} message."""
    first = msg.meta.get("first")
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise ChannelError(f"records message with a bad first sequence number {first!r}")
    try:
        records = json.loads(msg.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ChannelError(f"records message that is not a JSON array: {e}") from None
    if not isinstance(records, list):
        raise ChannelError("records message that is not a JSON array")
    return first, records


def ack_meta(seq: int) -> dict[str, Any]:
    return {"k": ACK, "seq": seq}


def parse_ack(msg: Message) -> int:
    seq = msg.meta.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ChannelError(f"ack with a bad sequence number {seq!r}")
    return seq
