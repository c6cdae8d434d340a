# -*- test-case-name: tests.logd.test_format -*-
"""
Log records and log lines: what the log daemon (OKWS's oklogd) accepts and what it writes.

Senders never format lines.  They send records, small dicts of known fields
(see L{ACCESS_RECORD}, L{EVENT_RECORD}, L{DROPPED_RECORD}); the daemon checks
each one here (L{check}) and formats it (L{access_line}, L{access_json},
L{event_lines}, ...).  OKWS's clients formatted their own lines, so a
compromised service could write any line it liked; here a sender can only
fill in fields, every value is escaped before it reaches a file, and the
source of every error-log line is the sender's identity as the launcher gave
it, never what the sender claims.

Pure logic: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, NamedTuple

from okws_twisted.config import COMBINED
from okws_twisted.wire.logrecord import (
    ACCESS_RECORD,
    LEVELS,
    MAX_INT,
    MAX_TEXT,
    MAX_TRACEBACK,
    RECORD_FIELDS,
)

# ---------------------------------------------------------------------------------------------
# Who sent a record


@dataclass(frozen=True)
class Sender:
    """A process that sends records, as the launcher named it (the ``peer`` message).

    C{key} is unique per process launch, across launcher runs: the journal uses
    it to know which records it already wrote (sequence numbers restart at 1
    in every new sender).
    """

    name: str
    role: str
    pid: int
    run: str = "-"
    launch: int = 1
    service: str | None = None
    index: int | None = None

    @cached_property
    def key(self) -> str:
        return f"{self.run}/{self.name}/{self.launch}/{self.pid}"

    @cached_property
    def service_field(self) -> str:
        """The C{service} field of a service process's access lines (its launcher-given name)."""
        return escape_bare(self.service or "")

    @property
    def source(self) -> str:
        """How error-log lines name this sender: C{"hello.0 pid 1234"}."""
        return f"{self.name} pid {self.pid}"

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Sender":
        """The sender a launcher ``peer`` message describes; raise L{ValueError}."""
        name, role, pid = meta.get("name"), meta.get("role"), meta.get("pid")
        if not isinstance(name, str) or not name or not isinstance(role, str) or not _is_int(pid):
            raise ValueError(f"a log peer needs a name, a role and a pid, got {dict(meta)!r}")
        run, launch = meta.get("run", "-"), meta.get("launch", 1)
        service, index = meta.get("service"), meta.get("index")
        return cls(
            name=name,
            role=role,
            pid=pid,
            run=run if isinstance(run, str) and run else "-",
            launch=launch if _is_int(launch) else 1,
            service=service if isinstance(service, str) else None,
            index=index if _is_int(index) else None,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Records: the fields a sender may fill in (their shapes are the log channel's, in wire.logchannel)


#: Fields a sender of this role may not set (the daemon knows better).
_NOT_FROM = {"service": frozenset({"service"})}
#: Roles that may send access records.
_ACCESS_ROLES = frozenset({"dispatcher", "service"})


class Checked(NamedTuple):
    """A record that passed L{check}: its kind and its clean fields."""

    kind: str
    fields: dict[str, Any]


def check(record: object, sender: Sender) -> tuple[Checked | None, list[str]]:
    """Validate one record from C{sender}.

    Returns the clean record (unknown, mistyped or forbidden fields removed,
    long text cut) or L{None} if nothing usable is left, and the problems
    found, each a short phrase for the error log.  Never raises.
    """
    if not isinstance(record, dict):
        return None, [f"not a record but {type(record).__name__}"]
    if usual_access(record, sender.role):
        return Checked("access", record), []
    kind = record.get("kind")
    schema = RECORD_FIELDS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        return None, [f"unknown kind {_shown(kind)}"]
    if kind == "access" and sender.role not in _ACCESS_ROLES:
        return None, [f"a {sender.role} may not send access records"]
    forbidden = _NOT_FROM.get(sender.role, frozenset())
    problems: list[str] = []
    fields: dict[str, Any] = {}
    # The daemon checks every record it writes: keep this loop lean.
    for name, value in record.items():
        want = schema.get(name) if type(name) is str else None
        if want is None or name in forbidden:
            problems.append(f"unknown field {_shown(name)}")
            continue
        if want is int:
            if type(value) is not int or not -MAX_INT <= value <= MAX_INT:  # (a bool is not an int here)
                problems.append(f"field {name!r} is not a whole number")
                continue
        elif type(value) is not str:
            problems.append(f"field {name!r} is not text")
            continue
        elif len(value) > MAX_TEXT:
            limit = MAX_TRACEBACK if name == "traceback" else MAX_TEXT
            if len(value) > limit:
                problems.append(f"field {name!r} cut from {len(value)} to {limit} characters")
                value = value[:limit]
        fields[name] = value
    if kind == "access" and "status" not in fields:
        problems.append("an access record without a status")
        return None, problems
    if kind == "event":
        if fields.get("level") not in LEVELS:
            if "level" in fields:
                problems.append(f"unknown level {_shown(fields['level'])}")
            fields["level"] = "error"
        fields.setdefault("text", "")
    if kind == "dropped" and "count" not in fields:
        problems.append("a dropped report without a count")
        return None, problems
    return Checked(kind, fields), problems


#: Per role that may send access records, the fields it may fill in.
_ACCESS_NAMES = {role: frozenset(ACCESS_RECORD) - _NOT_FROM.get(role, frozenset()) for role in _ACCESS_ROLES}
#: The access record's whole-number fields (the others are text).
_ACCESS_INTS = frozenset(name for name, want in ACCESS_RECORD.items() if want is int)


def usual_access(record: dict[Any, Any], role: str) -> bool:
    """Whether C{record} is a well-formed access record from a process of C{role}: every field
    known and allowed, of its type, within its limit, a status present.  That is every record a
    service or the dispatcher sends, so L{check} takes it as it is, without copying it field by
    field; anything else goes the long way, which names the problems."""
    names = _ACCESS_NAMES.get(role)
    if names is None or record.get("kind") != "access" or "status" not in record or not record.keys() <= names:
        return False
    for name, value in record.items():
        if name in _ACCESS_INTS:
            if type(value) is not int or not -MAX_INT <= value <= MAX_INT:  # (a bool is not an int here)
                return False
        elif type(value) is not str or len(value) > MAX_TEXT:
            return False
    return True


def _shown(value: object) -> str:
    text = repr(value)
    return escape(text[:60] + ("..." if len(text) > 60 else ""))


# ---------------------------------------------------------------------------------------------
# Escaping

_UNSAFE_QUOTED = re.compile(r'[^\x20-\x7e]|["\\]')
_UNSAFE_BARE = re.compile(r'[^\x21-\x7e]|["\\]')
_UNSAFE_TEXT = re.compile(r"[^\x20-\x7e]|\\")


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in '"\\':
        return "\\" + ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """C{text} for a quoted field: printable ASCII only, C{"} and C{\\} escaped, the rest as C{\\xNN}."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the common case, checked faster than the regular expression runs
    return _UNSAFE_QUOTED.sub(_escape_char, text)


def escape_bare(text: str) -> str:
    """C{text} for an unquoted field: like L{escape}, and a space is C{\\x20} so fields stay apart."""
    if not text:
        return "-"
    if text.isascii() and text.isprintable() and " " not in text and '"' not in text and "\\" not in text:
        return text
    return _UNSAFE_BARE.sub(_escape_char, text)


def escape_text(text: str) -> str:
    """C{text} for the end of an error-log line: printable ASCII, C{\\} doubled, the rest as C{\\xNN}."""
    return _UNSAFE_TEXT.sub(_escape_char, text)


# ---------------------------------------------------------------------------------------------
# access.log

_YEAR_10000 = 253402300800
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class TimeFormats:
    """Formats timestamps (whole microseconds since 1970, UTC), caching the second."""

    def __init__(self) -> None:
        self._second = -1
        self._clf = ""
        self._iso = ""

    def _at(self, micros: int) -> int:
        second, fraction = divmod(micros, 1_000_000)
        if not 0 <= second < _YEAR_10000:
            raise ValueError("time out of range")
        if second != self._second:
            t = time.gmtime(second)
            self._second = second
            self._clf = f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            self._iso = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        return fraction

    def clf(self, micros: int) -> str:
        """Apache's C{%t} without brackets: C{10/Oct/2000:13:55:36 +0000}."""
        try:
            self._at(micros)
        except (OverflowError, OSError, ValueError):
            return "-"
        return self._clf

    def iso(self, micros: int) -> str:
        """ISO 8601 in UTC with microseconds: C{2000-10-10T13:55:36.123456Z}."""
        try:
            fraction = self._at(micros)
        except (OverflowError, OSError, ValueError):
            return "-"
        return f"{self._iso}.{fraction:06d}Z"


def _bare(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None:
        return "-"
    if type(value) is str:
        return escape_bare(value)
    return str(value)


def _quoted(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    return f'"{escape(value)}"' if value else '"-"'


def _service(fields: Mapping[str, Any], sender: Sender) -> str:
    if sender.role == "service":
        return sender.service_field
    return _bare(fields, "service")


def _instance(fields: Mapping[str, Any], sender: Sender) -> str:
    if sender.role == "service" and sender.index is not None:
        return str(sender.index)
    return "-"


def _bytes(fields: Mapping[str, Any], sender: Sender) -> str:
    value = fields.get("bytes")
    return str(value) if value else "-"  # Apache's %b: "-" for no body


_RENDER: dict[str, Callable[[Mapping[str, Any], Sender, TimeFormats], str]] = {
    "client": lambda f, s, t: _bare(f, "client"),
    "ident": lambda f, s, t: "-",
    "user": lambda f, s, t: "-",
    "time": lambda f, s, t: f"[{t.clf(f['time'])}]" if "time" in f else "[-]",
    "request": lambda f, s, t: _quoted(f, "request"),
    "status": lambda f, s, t: _bare(f, "status"),
    "bytes": lambda f, s, t: _bytes(f, s),
    "referer": lambda f, s, t: _quoted(f, "referer"),
    "user_agent": lambda f, s, t: _quoted(f, "user_agent"),
    "service": lambda f, s, t: _service(f, s),
    "instance": lambda f, s, t: _instance(f, s),
    "request_id": lambda f, s, t: _bare(f, "request_id"),
    "response_time": lambda f, s, t: _bare(f, "response_time"),
    "tls": lambda f, s, t: _bare(f, "tls"),
    "host": lambda f, s, t: _bare(f, "host"),
}


def plain_strings(payload: bytes) -> bool:
    """Whether every string in this JSON text (a C{records} payload) is printable ASCII without
    C{"} or C{\\}, so that quoted fields need no escaping: the text is ASCII without a backslash
    (no escape sequence) and without DEL, and strict JSON (C{json.loads}'s default) refuses
    raw control characters in strings.  A few C scans of the batch instead of several checks
    per field of every record."""
    return payload.isascii() and b"\\" not in payload and b"\x7f" not in payload


def access_line(
    fields: Mapping[str, Any], sender: Sender, chosen: tuple[str, ...], times: TimeFormats, plain: bool = False
) -> str:
    """One access.log line (with its newline) for a checked access record.

    C{plain}: the record came in a batch whose strings are all plain (L{plain_strings}): only an
    unquoted field's spaces can need escaping.
    """
    if chosen == COMBINED and plain:  # the default, for a usual batch: no escaping to do
        get = fields.get
        client = get("client") or "-"
        if " " in client:
            client = escape_bare(client)
        time_ = f"[{times.clf(fields['time'])}]" if "time" in fields else "[-]"
        response_time = get("response_time")
        return (
            f'{client} - - {time_} "{get("request") or "-"}" {fields["status"]} {get("bytes") or "-"} '
            f'"{get("referer") or "-"}" "{get("user_agent") or "-"}" {_service(fields, sender)} '
            f'{"-" if response_time is None else response_time}\n'
        )
    if chosen == COMBINED:  # the default, once per response: one f-string
        time_ = f"[{times.clf(fields['time'])}]" if "time" in fields else "[-]"
        return (
            f"{_bare(fields, 'client')} - - {time_} {_quoted(fields, 'request')} {_bare(fields, 'status')} "
            f"{_bytes(fields, sender)} {_quoted(fields, 'referer')} {_quoted(fields, 'user_agent')} "
            f"{_service(fields, sender)} {_bare(fields, 'response_time')}\n"
        )
    return " ".join([_RENDER[name](fields, sender, times) for name in chosen]) + "\n"


#: A string of a plain batch: printable ASCII without C{"} or C{\} (so no escape sequence),
#: within L{MAX_TEXT}; C{_KEPT} captures it.
_TEXT = r'"[\x20\x21\x23-\x5b\x5d-\x7e]{0,%d}"' % MAX_TEXT
_KEPT = r'"([\x20\x21\x23-\x5b\x5d-\x7e]{0,%d})"' % MAX_TEXT
#: A whole number as JSON writes one, non-negative, below 10**18 (so within L{MAX_INT}).
_WHOLE = r"(0|[1-9][0-9]{0,17})"
assert 10**18 <= MAX_INT
#: One access record exactly as L{okws_twisted.wire.logchannel.access_text} writes it, and what
#: follows it in the batch (C{,} or the closing C{]}).  Groups: time, client, request, status,
#: bytes, response_time, referer, user_agent (request_id, tls and host are checked, not kept:
#: the combined line does not show them).
_SERVICE_ACCESS = re.compile(
    rf'\{{"kind":"access","time":{_WHOLE},"client":{_KEPT},"request":{_KEPT},"status":{_WHOLE},'
    rf'"bytes":{_WHOLE},"request_id":{_TEXT},"response_time":{_WHOLE}'
    rf'(?:,"referer":{_KEPT})?(?:,"user_agent":{_KEPT})?(?:,"tls":{_TEXT})?(?:,"host":{_TEXT})?\}}[,\]]'
)


def service_access_records(text: str) -> list[re.Match[str]] | None:
    """A service's usual batch read without decoding its JSON: one match per record, or L{None}
    unless the whole text is C{[record,record,...]} with every record byte for byte in
    L{okws_twisted.wire.logchannel.access_text}'s shape, every string plain (see
    L{plain_strings}) and every number a non-negative whole number below 10**18.

    Every batch this accepts C{json.loads} reads as the same records, each a usual access
    record (L{usual_access}) from a service; anything else (another field order, whitespace,
    a duplicate or unknown field, a negative or large number, any escaping) is L{None}, and the
    caller takes the long way.
    """
    if text[:1] != "[":
        return None
    match = _SERVICE_ACCESS.match
    records = []
    end, pos = len(text), 1
    while True:
        record = match(text, pos)
        if record is None:
            return None
        records.append(record)
        pos = record.end()
        if text[pos - 1] == "]":
            return records if pos == end else None


def service_access_lines(
    records: list[re.Match[str]], sender: Sender, times: TimeFormats
) -> tuple[list[str], list[str]]:
    """The combined access.log lines and the error.log lines of records read by
    L{service_access_records} from C{sender} (a service): what L{access_line} (C{plain}) and
    L{status_line} write for the records C{json.loads} would give."""
    service = sender.service_field
    clf = times.clf
    second, stamp = None, ""
    access: list[str] = []
    errors: list[str] = []
    for record in records:
        micros, client, request, status, sent, response_time, referer, agent = record.groups()
        if micros[:-6] != second:  # the whole seconds, as text (whole numbers have no leading zero)
            second, stamp = micros[:-6], clf(int(micros))
        if not client:
            client = "-"
        elif " " in client:
            client = escape_bare(client)
        access.append(
            f'{client} - - [{stamp}] "{request or "-"}" {status} {"-" if sent == "0" else sent} '
            f'"{referer or "-"}" "{agent or "-"}" {service} {response_time}\n'
        )
        if status >= "400" if len(status) == 3 else len(status) > 3:  # rare: the usual way, from the record as JSON reads it
            errors.append(status_line(json.loads(record.group()[:-1]), sender, times))  # type: ignore[arg-type]
    return access, errors


def access_json(fields: Mapping[str, Any], sender: Sender, times: TimeFormats) -> str:
    """One access.json line: every field, C{null} where unknown; ASCII-only JSON."""
    service: str | None
    if sender.role == "service":
        service, instance = sender.service, sender.index
    else:
        service, instance = fields.get("service"), None
    document = {
        "time": times.iso(fields["time"]) if "time" in fields else None,
        "client": fields.get("client"),
        "request": fields.get("request"),
        "status": fields.get("status"),
        "bytes": fields.get("bytes"),
        "referer": fields.get("referer"),
        "user_agent": fields.get("user_agent"),
        "service": service,
        "instance": instance,
        "request_id": fields.get("request_id"),
        "response_time_us": fields.get("response_time"),
        "tls": fields.get("tls"),
        "host": fields.get("host"),
        "source": sender.name,
        "pid": sender.pid,
    }
    return json.dumps(document, separators=(",", ":")) + "\n"


# ---------------------------------------------------------------------------------------------
# error.log


def _prefix(micros: int | None, level: str, sender: Sender, times: TimeFormats) -> str:
    stamp = times.iso(micros) if micros is not None else "-"
    return f"[{stamp}] [{level}] [{escape_text(sender.source)}] "


def event_lines(fields: Mapping[str, Any], sender: Sender, times: TimeFormats) -> str:
    """error.log lines for a checked event: the text (and its request's id), then each traceback line, all prefixed."""
    prefix = _prefix(fields.get("time"), fields["level"], sender, times)
    request = f" [request_id {_bare(fields, 'request_id')}]" if "request_id" in fields else ""
    out = [prefix + escape_text(fields["text"]) + request + "\n"]
    traceback = fields.get("traceback")
    if traceback:
        out.extend(prefix + "  " + escape_text(line) + "\n" for line in traceback.rstrip("\n").split("\n"))
    return "".join(out)


def status_line(fields: Mapping[str, Any], sender: Sender, times: TimeFormats) -> str | None:
    """The error.log line for an access record whose status is 400 or more, else L{None}."""
    status = fields["status"]
    if status < 400:
        return None
    level = "error" if status >= 500 else "warn"
    text = (
        f"{status} {_quoted(fields, 'request')} from {_bare(fields, 'client')}"
        f" service {_service(fields, sender)} request_id {_bare(fields, 'request_id')}"
    )
    reason = fields.get("reason")
    if reason:
        text += ": " + escape_text(reason)
    return _prefix(fields.get("time"), level, sender, times) + text + "\n"


def dropped_line(fields: Mapping[str, Any], sender: Sender, times: TimeFormats) -> str:
    """The error.log line for a sender's report of records it had to drop."""
    capacity = fields.get("capacity")
    bound = f" (its buffer holds {capacity} records)" if capacity is not None else ""
    return (
        _prefix(fields.get("time"), "error", sender, times)
        + f"dropped {fields['count']} log records while the log daemon was away{bound}\n"
    )


def problem_line(micros: int, daemon: Sender, sender: Sender, seq: int, problems: list[str], more: int, times: TimeFormats) -> str:
    """The daemon's error.log report of a bad record (C{more}: further bad records in the batch)."""
    text = f"bad log record from {sender.source} (seq {seq}): " + "; ".join(problems)
    if more:
        text += f" (and {more} more bad records in this batch)"
    return _prefix(micros, "warn", daemon, times) + escape_text(text) + "\n"


def own_line(micros: int, level: str, daemon: Sender, text: str, times: TimeFormats) -> str:
    """A line the daemon writes about itself (start, recovery, rotation)."""
    return _prefix(micros, level, daemon, times) + escape_text(text) + "\n"
