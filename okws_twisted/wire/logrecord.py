# -*- test-case-name: tests.logd.test_format -*-
"""
The shape of a log record: the fields a sender may fill in, their types and their limits.

Senders (every process, through L{okws_twisted.wire.logsender}) build records of these shapes;
the log daemon checks each one against them (L{okws_twisted.logd.format.check}) before it
writes anything.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

__all__ = ["ACCESS_RECORD", "DROPPED_RECORD", "EVENT_RECORD", "LEVELS", "MAX_INT", "MAX_TEXT", "MAX_TRACEBACK", "RECORD_FIELDS"]

#: The largest text value kept; longer values are cut (and the cut is reported).
MAX_TEXT = 16 * 1024
#: Tracebacks may be longer than other text.
MAX_TRACEBACK = 64 * 1024
#: Integers outside this range are refused (times are microseconds since 1970).
MAX_INT = 2**62

LEVELS = ("debug", "info", "warn", "error", "critical")

#: The fields of an access record (``kind = "access"``) and their types.
#: C{time} and C{response_time} are whole microseconds; C{service} is only
#: taken from the dispatcher (a service instance's is its launcher-given name);
#: C{host} is the request's host as routing compares it (lower case, no port).
ACCESS_RECORD: dict[str, type] = {
    "kind": str,
    "time": int,
    "client": str,
    "request": str,
    "status": int,
    "bytes": int,
    "referer": str,
    "user_agent": str,
    "request_id": str,
    "response_time": int,
    "tls": str,
    "service": str,
    "reason": str,
    "host": str,
}

#: An error-log event (``kind = "event"``): C{level} one of L{LEVELS}; C{request_id}
#: when the event is about one request (a failed render), as in its access record.
EVENT_RECORD: dict[str, type] = {
    "kind": str,
    "time": int,
    "level": str,
    "text": str,
    "traceback": str,
    "request_id": str,
}

#: A sender's report that its buffer was full and it dropped C{count} records.
DROPPED_RECORD: dict[str, type] = {
    "kind": str,
    "time": int,
    "count": int,
    "capacity": int,
}

RECORD_FIELDS = {"access": ACCESS_RECORD, "event": EVENT_RECORD, "dropped": DROPPED_RECORD}
