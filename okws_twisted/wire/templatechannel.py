# -*- test-case-name: tests.wire.test_templatechannel -*-
"""
The template protocol between the template publisher (OKWS's pubd) and its peers.

One L{okws_twisted.wire.channel.MessageChannel} joins the publisher to each
service instance and to the dispatcher.  Message kinds:

``get`` (service -> publisher)
    C{id} (the requester's number for this request) and C{name}: send me
    this template.
``source`` (publisher -> service)
    C{id}, C{name}, C{etag} (a content version tag); payload: the template
    text, UTF-8.
``missing`` / ``refused`` (publisher -> service)
    C{id}, C{name}, C{reason}: there is no such template, or the name (or
    the file) is not allowed.  Both are final answers for that name until it
    changes.
``changed`` (publisher -> every peer that has sent a ``get``)
    Payload: a JSON list of the template names that appeared, changed or
    disappeared on disk.  A service forgets what it knew about them.
``pages`` (publisher -> every peer)
    Payload: a JSON object from status code to the site's rendered error
    page, with L{okws_twisted.wire.errorpage.MESSAGE_MARKER} where the message
    goes.  Sent when a peer is wired and whenever a page changes.

Names and payloads are validated here; a malformed message raises
L{ChannelError}, which the receiver logs (it never ends the process).
Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from okws_twisted.wire.channel import ChannelError, Message

#: Longest template name accepted, in characters.
MAX_NAME = 1024
#: Largest template file served, in bytes.
MAX_TEMPLATE_BYTES = 4 * 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class NameRefused(ValueError):
    """A name that can never be a template name here; C{str(e)} says why."""


class TemplateAbsent(Exception):
    """No template answers to a name.

    @ivar refused: C{True} if the name or the file is not allowed (the
        publisher answers C{refused}), C{False} if there is simply no such
        template (it answers C{missing}).
    @ivar reason: a short explanation for the log.
    """

    def __init__(self, name: str, reason: str, refused: bool = False) -> None:
        super().__init__(name, reason, refused)
        self.name = name
        self.reason = reason
        self.refused = refused

    def __str__(self) -> str:
        return f"{self.name!r}: {self.reason}"

    def answer(self) -> "Absent":
        """The same answer as a value, to send or to keep."""
        return Absent(self.name, self.reason, self.refused)


@dataclass(frozen=True)
class Source:
    """One version of one template: its name, text and an opaque version tag.

    C{etag} is derived from the content, so two reads of unchanged text give
    the same tag and a service need not recompile.
    """

    name: str
    text: str
    etag: str


@dataclass(frozen=True)
class Absent:
    """The answer that no template answers to C{name}.

    @ivar refused: C{True} if the name or the file is not allowed, C{False}
        if there is simply no such template.
    """

    name: str
    reason: str
    refused: bool = False


def check_name(name: object) -> str:
    """Return C{name} if it is a well-formed template name; raise L{NameRefused}.

    Pure: it looks at the string only.  A name is its own canonical form, so
    there is exactly one spelling of each template (C{"a//b"} and C{"./a"}
    are refused rather than rewritten).
    """
    if not isinstance(name, str):
        raise NameRefused(f"a template name is a string, not {type(name).__name__}")
    if not name:
        raise NameRefused("the name is empty")
    if len(name) > MAX_NAME:
        raise NameRefused(f"the name is longer than {MAX_NAME} characters")
    if "\\" in name:
        raise NameRefused("the name contains a backslash")
    if _CONTROL.search(name):
        raise NameRefused("the name contains a control character")
    if name.startswith("/"):
        raise NameRefused("the name is an absolute path")
    for segment in name.split("/"):
        if segment == "":
            raise NameRefused("the name has an empty segment")
        if segment in (".", ".."):
            raise NameRefused(f"the name contains a {segment!r} segment")
        if segment.startswith("."):
            raise NameRefused("the name has a hidden segment (starting with '.')")
    return name


GET = "get"
SOURCE = "source"
MISSING = "missing"
REFUSED = "refused"
CHANGED = "changed"
PAGES = "pages"

#: The replies to a C{get}.
REPLIES = (SOURCE, MISSING, REFUSED)

_MAX_REASON = 500


@dataclass(frozen=True)
class Get:
    """A request for one template."""

    id: int
    name: str


@dataclass(frozen=True)
class Reply:
    """The answer to the C{get} numbered C{id}: a L{Source} or an L{Absent}."""

    id: int
    result: Source | Absent


Outgoing = tuple[dict[str, Any], bytes]


def get(request_id: int, name: str) -> Outgoing:
    """The C{get} message for template C{name}."""
    return {"k": GET, "id": request_id, "name": name}, b""


def source(request_id: int, found: Source) -> Outgoing:
    """The C{source} reply carrying C{found}."""
    return {"k": SOURCE, "id": request_id, "name": found.name, "etag": found.etag}, found.text.encode("utf-8")


def absent(request_id: int, answer: Absent) -> Outgoing:
    """The C{missing} or C{refused} reply."""
    kind = REFUSED if answer.refused else MISSING
    return {"k": kind, "id": request_id, "name": answer.name[:MAX_NAME], "reason": answer.reason[:_MAX_REASON]}, b""


def changed(names: list[str]) -> Outgoing:
    """The C{changed} notice for C{names}."""
    return {"k": CHANGED}, json.dumps(sorted(names)).encode("utf-8")


def pages(rendered: Mapping[int, str]) -> Outgoing:
    """The C{pages} message for C{rendered} (status -> page)."""
    body = {str(status): page for status, page in sorted(rendered.items())}
    return {"k": PAGES}, json.dumps(body).encode("utf-8")


def _request_id(msg: Message) -> int:
    value = msg.meta.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChannelError(f"{msg.kind} message without a valid id")
    return value


def _name(msg: Message) -> str:
    value = msg.meta.get("name")
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ChannelError(f"{msg.kind} message without a valid name")
    return value


def _no_fds(msg: Message) -> None:
    if msg.fds:
        raise ChannelError(f"{msg.kind} message carries file descriptors")


def parse_get(msg: Message) -> Get:
    """The request in a C{get} message.

    The name is only checked to be a string here; whether it is an
    acceptable template name is the publisher's answer to give.
    """
    _no_fds(msg)
    return Get(_request_id(msg), _name(msg))


def parse_reply(msg: Message) -> Reply:
    """The answer in a C{source}, C{missing} or C{refused} message."""
    _no_fds(msg)
    request_id, name = _request_id(msg), _name(msg)
    if msg.kind == SOURCE:
        etag = msg.meta.get("etag")
        if not isinstance(etag, str) or not etag:
            raise ChannelError("source message without an etag")
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ChannelError(f"source of {name!r} is not UTF-8") from None
        return Reply(request_id, Source(name, text, etag))
    if msg.kind in (MISSING, REFUSED):
        reason = msg.meta.get("reason")
        if not isinstance(reason, str):
            raise ChannelError(f"{msg.kind} message without a reason")
        return Reply(request_id, Absent(name, reason, refused=msg.kind == REFUSED))
    raise ChannelError(f"{msg.kind!r} is not a reply")


def _json_payload(msg: Message) -> object:
    _no_fds(msg)
    try:
        return json.loads(msg.payload)
    except ValueError as e:
        raise ChannelError(f"{msg.kind} payload is not JSON: {e}") from None


def parse_changed(msg: Message) -> list[str]:
    """The names in a C{changed} notice."""
    names = _json_payload(msg)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ChannelError("changed payload is not a list of names")
    return names


def parse_pages(msg: Message) -> dict[int, str]:
    """The pages in a C{pages} message, by status code."""
    body = _json_payload(msg)
    if not isinstance(body, dict):
        raise ChannelError("pages payload is not an object")
    out: dict[int, str] = {}
    for key, page in body.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) == 3) or not isinstance(page, str):
            raise ChannelError(f"bad page entry {key!r}")
        out[int(key)] = page
    return out
