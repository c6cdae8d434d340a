# -*- test-case-name: tests.wire.test_httpframe -*-
"""
The strict HTTP/1.1 reader, OKWS's libahttp: request heads and request framing.

Pure logic, no I/O.  The dispatcher reads the head it routes on with
L{HeadReader}; a service instance puts L{RequestFramer} in front of
twisted.web's C{HTTPChannel} to find where each pipelined request starts and
ends, so it can feed the channel only whole requests it owns and hand the
connection back at a request boundary.  When the dispatcher relays requests
to a service (C{isolation = request}) it frames them with the same
L{RequestFramer}, and the service's responses with L{ResponseFramer}.  Both sides use this one module, so they
can never disagree about framing: any request a smuggling attack could use
(RFC 9112 section 11.2) is refused here with an L{HTTPError}, before a router
or twisted.web sees it.

Rules beyond the RFC's musts, chosen where the RFC leaves room:

  - At most one empty line (CRLF) before a request line is ignored, because
    twisted.web ignores exactly one; it is counted in the head's C{raw} and
    C{size}, so C{Head.raw + unread()} is exactly the bytes received.
  - Only CRLF ends a line: a bare CR or bare LF anywhere in a head, a chunk
    line or a trailer is a 400.
  - The only accepted C{Transfer-Encoding} is the single coding C{chunked}
    (case-insensitive, one field, no parameters), which is also the only one
    twisted.web decodes.  Anything else is a 400 whose reason names what was
    wrong (unknown coding, chunked twice, chunked not last, other codings).
  - The router works on raw paths, so a path that would change under
    normalisation is refused: dot-segments (C{/./}, C{/../}, a final C{/.} or
    C{/..}, also percent-encoded as C{%2e}), a C{%} not followed by two hex
    digits, and an encoded NUL (C{%00}).  A fragment (C{#}) in the target is
    refused too; no client sends one.
  - An absolute-form target (C{http://host/p}) must name the same authority as
    the C{Host} field (RFC 9112 section 3.2.2 makes that a client MUST); the
    routing path is its path part.
  - Trailers may not carry framing, routing, control or content-describing
    fields (L{FORBIDDEN_TRAILERS}).
  - Chunk-size lines: 1 to 16 hex digits, extensions as tokens or
    quoted-strings without a backslash (twisted.web refuses any backslash in
    a chunk extension, so a quoted-pair is refused here first), at most 1024
    bytes per line; the trailer section is bounded
    by C{max_head} (and 64 KiB, twisted.web's own bound).

Each error is raised at a byte fixed by the bytes themselves (the LF ending a
bad line, the first byte past a limit, the byte after a bare CR), never by how
they were split: a head that arrives one byte at a time fails with the same
error as the same head read in one piece, and never waits for more input once
it is already invalid.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Body",
    "End",
    "FORBIDDEN_TRAILERS",
    "HTTPError",
    "Head",
    "HeadReader",
    "Limits",
    "Piece",
    "RequestFramer",
    "RequestHead",
    "ResponseError",
    "ResponseFramer",
    "parse_head",
]


@dataclass(frozen=True)
class Limits:
    """
    Bounds on what one request may make the reader buffer.

    @ivar max_request_line: bytes of the request line (without CRLF); beyond is 414.
    @ivar max_head: bytes of the whole head, request line through the blank
        line; beyond is 431.
    @ivar max_headers: number of header fields (and of trailer fields); beyond is 431.
    @ivar max_body: bytes of body (Content-Length, or the sum of chunk data);
        beyond is 413.  L{None} means unlimited; C{0} allows only empty bodies.
    """

    max_request_line: int = 8192
    max_head: int = 16384
    max_headers: int = 100
    max_body: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_head", "max_headers"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.max_body is not None and (not _is_int(self.max_body) or self.max_body < 0):
            raise ValueError(f"max_body must be None or a non-negative integer, not {self.max_body!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class HTTPError(Exception):
    """
    A request the server must refuse: C{status} (int) and a short C{reason}
    (str, safe to show to a client: it never echoes request bytes).
    """

    status: int
    reason: str

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class RequestHead(NamedTuple):
    """
    A parsed, validated request head (immutable; a named tuple, which is built several times
    faster than a frozen dataclass: every request builds one in the dispatcher and one in the
    service).

    @ivar method: e.g. C{b"GET"}.
    @ivar target: the request-target exactly as sent.
    @ivar path: the path the router uses: the origin-form target without its
        query; for an absolute-form target its path (C{b"/"} if empty); for
        C{OPTIONS *}, C{b"*"}.
    @ivar query: the query without the C{?}, C{b""} if none.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar headers: C{(name, value)} pairs in order, names lower-cased, values
        with surrounding whitespace removed.
    @ivar host: the C{Host} field (for an absolute-form target without one, the
        target's authority), or L{None} for HTTP/1.0 without it.
    @ivar content_length: the declared body length, or L{None}.
    @ivar chunked: the body is chunked.
    @ivar keep_alive: the client lets the connection carry another request.
    @ivar expect_continue: an HTTP/1.1 client waits for C{100 Continue}.
    @ivar size: bytes of the raw head, request line (and any empty line before
        it) through the blank line.
    """

    method: bytes
    target: bytes
    path: bytes
    query: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    host: bytes | None
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    size: int

    def header(self, name: bytes) -> bytes | None:
        """The first value of the field C{name} (lower case), or L{None}."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Head(NamedTuple):
    """A request head, and its bytes exactly as received."""

    head: RequestHead
    raw: bytes


class Body(NamedTuple):
    """
    Body bytes exactly as received, chunk lines, extensions and trailers
    included, so they can be passed on verbatim to a parser that decodes them.
    """

    data: bytes


@dataclass(frozen=True)
class End:
    """The request is complete; the next event belongs to the next request."""


# -- grammar (RFC 9110 section 5.6, RFC 9112) ---------------------------------

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# field-vchar, SP and HTAB: everything but controls (and DEL).
_FIELD_CHAR = rb"[\t\x20-\x7e\x80-\xff]"

_TOKEN = re.compile(_TCHAR + rb"+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_FIELD_LINE = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*(" + _FIELD_CHAR + rb"*)")
# A whole valid head in one match: the fast path for a head that is all there.
_WHOLE_HEAD = re.compile(
    rb"(?:\r\n)?(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r\n"
    rb"((?:" + _TCHAR + rb"+:" + _FIELD_CHAR + rb"*\r\n)*)\r\n"
)

# The commonest valid head (L{_parse_common}): HTTP/1.0 or 1.1, an origin-form target whose path
# has no "%" (nor "#", nor "?"), its query without "#".
_COMMON_HEAD = re.compile(
    rb"(?:\r\n)?(" + _TCHAR + rb"+) (/[\x21\x22\x24\x26-\x3e\x40-\x7e]*)(?:\?([\x21\x22\x24-\x7e]*))? HTTP/1\.([01])\r\n"
    rb"((?:" + _TCHAR + rb"+:" + _FIELD_CHAR + rb"*\r\n)*)\r\n"
)

# uri-host [ ":" port ] (RFC 3986): an IP literal, or a reg-name / IPv4 address.
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::([0-9]{1,5}))?"
)
_ABSOLUTE = re.compile(rb"[hH][tT][tT][pP][sS]?://([^/?]*)(/[^?]*)?(?:\?(.*))?", re.DOTALL)
_DOT_SEGMENT = re.compile(rb"/(?:\.|%2[eE]){1,2}(?:/|\Z)")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")

# A quoted-string without quoted-pairs: twisted.web's chunk decoder refuses "\\".
_QUOTED = rb'"[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]*"'
_CHUNK_EXT = rb"[ \t]*" + _TCHAR + rb"+(?:[ \t]*=[ \t]*(?:" + _TCHAR + rb"+|" + _QUOTED + rb"))?"
# chunk-size [ chunk-ext ]; no whitespace before the first ";" (twisted.web refuses it).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;" + _CHUNK_EXT + rb"(?:[ \t]*;" + _CHUNK_EXT + rb")*)?")

_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"
_CR = 0x0D

#: Empty lines ignored before a request line (twisted.web ignores exactly one).
_MAX_EMPTY_LINES = 1
#: Bytes of one chunk-size line, CRLF included (twisted.web allows 1024 without CRLF).
_MAX_CHUNK_LINE = 1024
#: twisted.web refuses a trailer section larger than this.
_MAX_TRAILER_SECTION = 65536
#: Decimal digits of a Content-Length (past leading zeros) before it is "too large".
_MAX_LENGTH_DIGITS = 18

#: Fields that may not appear in a trailer section: they frame, route or
#: control the message, or describe content that twisted.web has already acted on.
FORBIDDEN_TRAILERS = frozenset(
    {
        b"authorization",
        b"cache-control",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"expect",
        b"host",
        b"if-match",
        b"if-modified-since",
        b"if-none-match",
        b"if-range",
        b"if-unmodified-since",
        b"keep-alive",
        b"max-forwards",
        b"pragma",
        b"proxy-authorization",
        b"proxy-connection",
        b"range",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_KNOWN_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})
_WATCHED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"})

# (method, target, version, path, query, authority)
_RequestLine = tuple[bytes, bytes, bytes, bytes, bytes, "bytes | None"]


def _bad(reason: str) -> HTTPError:
    return HTTPError(400, reason)


# -- the request line ----------------------------------------------------------


def _request_line(method: bytes, target: bytes, major: bytes, minor: bytes) -> _RequestLine:
    """Check a syntactically valid request line's meaning; split its target."""
    if major != b"1" or minor not in (b"0", b"1"):
        raise HTTPError(505, "HTTP version not supported")
    version = _HTTP_11 if minor == b"1" else _HTTP_10
    if method == b"CONNECT":
        # Not 405: that needs an Allow header (RFC 9110 15.5.6), and no
        # resource here supports CONNECT; okws is not a proxy (9110 9.1).
        raise HTTPError(501, "CONNECT is not supported")
    if b"#" in target:
        raise _bad("fragment in request target")
    authority = None
    if target[0] == 0x2F:  # "/": origin-form, the common case
        path, _, query = target.partition(b"?")
    elif target == b"*":
        if method != b"OPTIONS":
            raise _bad("asterisk-form request target is only for OPTIONS")
        return (method, target, version, b"*", b"", None)
    else:
        m = _ABSOLUTE.fullmatch(target)
        if m is None:
            hm = _HOST.fullmatch(target)
            if hm is not None and hm.group(1) is not None:
                raise _bad("authority-form request target is only for CONNECT")
            raise _bad("request target must start with /")
        authority, path, query = m.groups()
        if not _valid_host(authority):
            raise _bad("invalid authority in request target")
        path = path or b"/"
        query = query or b""
    if b"%" in path:
        if _BAD_PERCENT.search(path) is not None:
            raise _bad("invalid percent-encoding in path")
        if b"%00" in path:
            raise _bad("encoded NUL in path")
    if (b"." in path or b"%" in path) and _DOT_SEGMENT.search(path) is not None:
        raise _bad("dot-segment in path")
    return (method, target, version, path, query, authority)


def _parse_request_line(line: bytes) -> _RequestLine:
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        parts = line.split(b" ")
        if len(parts) != 3 or not all(parts):
            raise _bad("malformed request line")
        method, _, version = parts
        if _TOKEN.fullmatch(method) is None:
            raise _bad("invalid method")
        if _VERSION.fullmatch(version) is None:
            raise _bad("malformed HTTP version")
        raise _bad("invalid character in request target")
    return _request_line(*m.groups())


def _valid_host(value: bytes) -> bool:
    known = _HOSTS_SEEN.get(value)
    if known is not None:
        return known
    m = _HOST.fullmatch(value)
    valid = m is not None and (m.group(1) is None or int(m.group(1)) <= 65535)
    if len(value) <= _HOST_MEMO_SIZE:
        if len(_HOSTS_SEEN) >= _HOST_MEMO_ENTRIES:
            _HOSTS_SEEN.clear()
        _HOSTS_SEEN[value] = valid
    return valid


#: L{_valid_host}'s answers for the hosts seen lately (a keep-alive client names the same host
#: in every request): a pure function's memo, bounded in entries and in the length of a value.
_HOSTS_SEEN: dict[bytes, bool] = {}
_HOST_MEMO_ENTRIES = 256
_HOST_MEMO_SIZE = 270


# -- field lines ---------------------------------------------------------------


def _field(line: bytes, what: str) -> tuple[bytes, bytes]:
    """A header or trailer line as C{(lower-case name, stripped value)}."""
    m = _FIELD_LINE.fullmatch(line)
    if m is None:
        raise _field_error(line, what)
    return m.group(1).lower(), m.group(2).rstrip(b" \t")


def _field_error(line: bytes, what: str) -> HTTPError:
    """Say precisely why C{line} is not a valid field line."""
    if b"\r" in line:
        return _bad(f"bare CR in {what}")
    if line[:1] in (b" ", b"\t"):
        return _bad(f"obsolete line folding in {what}")
    name, colon, value = line.partition(b":")
    if not colon:
        return _bad(f"{what} line without a colon")
    if not name:
        return _bad(f"empty {what} name")
    if name[-1:] in (b" ", b"\t"):
        return _bad(f"whitespace between {what} name and colon")
    if _TOKEN.fullmatch(name) is None:
        return _bad(f"invalid character in {what} name")
    if b"\x00" in value:
        return _bad(f"NUL in {what} value")
    return _bad(f"control character in {what} value")


def _tokens(values: list[bytes]) -> list[bytes]:
    """The elements of comma-separated list fields, stripped and lower-cased."""
    return [item.strip(b" \t").lower() for value in values for item in value.split(b",")]


# -- the head as a whole -------------------------------------------------------


def _finish(line: _RequestLine, fields: list[tuple[bytes, bytes]], size: int, limits: Limits) -> RequestHead:
    """Check what the fields say about routing and framing; build the head."""
    method, target, version, path, query, authority = line
    hosts: list[bytes] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    expect = False
    for name, value in fields:
        if name in _WATCHED:
            if name == b"host":
                hosts.append(value)
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"connection":
                connection.append(value)
            elif value.lower() == b"100-continue":
                expect = True
    http11 = version is _HTTP_11

    if len(hosts) > 1:
        raise _bad("repeated Host header")
    host = hosts[0] if hosts else None
    if host is None:
        if http11:
            raise _bad("missing Host header")
    elif not _valid_host(host):
        raise _bad("invalid Host header")
    if authority is not None:
        if host is None:
            host = authority
        elif host.lower() != authority.lower():
            raise _bad("Host header does not match the request target")

    content_length = None
    if lengths:
        if len(lengths) > 1:
            raise _bad("repeated Content-Length")
        if codings:
            raise _bad("both Content-Length and Transfer-Encoding")
        value = lengths[0]
        if not value.isdigit():
            raise _bad("invalid Content-Length")
        if len(value.lstrip(b"0")) > _MAX_LENGTH_DIGITS:
            raise HTTPError(413, "Content-Length too large")
        content_length = int(value)
        if limits.max_body is not None and content_length > limits.max_body:
            raise HTTPError(413, "request body too large")

    chunked = False
    if codings:
        if not http11:
            raise _bad("Transfer-Encoding on HTTP/1.0")
        _check_codings(_tokens(codings))
        chunked = True

    tokens = _tokens(connection) if connection else ()
    if http11:
        keep_alive = b"close" not in tokens
    else:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    return RequestHead(
        method,
        target,
        path,
        query,
        version,
        tuple(fields),
        host,
        content_length,
        chunked,
        keep_alive,
        expect and http11,
        size,
    )


def _check_codings(codings: list[bytes]) -> None:
    """Accept exactly one C{chunked}; say precisely what is wrong otherwise."""
    if codings == [b"chunked"]:
        return
    if any(_TOKEN.fullmatch(c) is None for c in codings):
        raise _bad("malformed Transfer-Encoding")
    if codings.count(b"chunked") > 1:
        raise _bad("chunked applied more than once")
    if codings[-1] != b"chunked":
        raise _bad("final transfer coding is not chunked")
    if any(c not in _KNOWN_CODINGS for c in codings[:-1]):
        raise _bad("unknown transfer coding")
    raise _bad("transfer codings other than chunked are not supported")


def _parse_common(head: bytes, limits: Limits) -> RequestHead | None:
    """
    The commonest head in one step: HTTP/1.x, an origin-form target whose path has no C{%}
    and no dot-segment, at most one each of C{Host}, C{Content-Length} and C{Connection}, no
    C{Transfer-Encoding}, and nothing L{_finish} would refuse.  L{None} for anything else
    (L{_parse_whole} then parses it the general way): it must give exactly what L{_finish}
    gives (tests/wire/test_httpframe.py checks it against the line-by-line scan).
    """
    m = _COMMON_HEAD.fullmatch(head)
    if m is None or m.end(4) - m.start(1) > limits.max_request_line:
        return None
    method, path, query, minor, block = m.groups()
    if method == b"CONNECT" or (b"/." in path and _DOT_SEGMENT.search(path) is not None):
        return None
    fields = []
    host = length = connection = None
    expect = False
    if block:
        for field in block[:-2].split(b"\r\n"):
            name, _, value = field.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            fields.append((name, value))
            if name in _WATCHED:
                if name == b"host":
                    if host is not None:
                        return None
                    host = value
                elif name == b"content-length":
                    if length is not None:
                        return None
                    length = value
                elif name == b"connection":
                    if connection is not None:
                        return None
                    connection = value
                elif name == b"transfer-encoding":
                    return None
                elif value.lower() == b"100-continue":
                    expect = True
        if len(fields) > limits.max_headers:
            return None
    http11 = minor == b"1"
    if host is None:
        if http11:
            return None
    elif not _valid_host(host):
        return None
    content_length = None
    if length is not None:
        if not length.isdigit() or len(length) > _MAX_LENGTH_DIGITS:
            return None
        content_length = int(length)
        if limits.max_body is not None and content_length > limits.max_body:
            return None
    if connection is None:
        keep_alive = http11
    else:
        tokens = _tokens([connection])
        keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
    if query is None:
        query = b""
        target = path
    else:
        target = head[m.start(2) : m.end(3)]
    return RequestHead(
        method,
        target,
        path,
        query,
        _HTTP_11 if http11 else _HTTP_10,
        tuple(fields),
        host,
        content_length,
        False,
        keep_alive,
        expect and http11,
        len(head),
    )


def _parse_whole(head: bytes, limits: Limits) -> RequestHead | None:
    """
    The fast path: C{head} ends with its blank line; if all of it is valid
    syntax within the limits, parse it with a few C-level scans.  L{None} sends
    the caller to the line-by-line scan, which finds the first error.
    """
    common = _parse_common(head, limits)
    if common is not None:
        return common
    m = _WHOLE_HEAD.fullmatch(head)
    if m is None or m.end(4) - m.start(1) > limits.max_request_line:
        return None
    method, target, major, minor, block = m.groups()
    fields = []
    if block:
        # The match proved every line is token ":" value, so split and partition suffice.
        for field in block[:-2].split(b"\r\n"):
            name, _, value = field.partition(b":")
            fields.append((name.lower(), value.strip(b" \t")))
        if len(fields) > limits.max_headers:
            return None
    line = _request_line(method, target, major, minor)
    return _finish(line, fields, len(head), limits)


class _HeadScanner:
    """
    Finds and parses the request head at the start of a growing buffer.

    Each call resumes where the last one stopped, so a head that arrives a
    byte at a time costs time linear in its length.  A head that is all there
    is parsed by one regular expression match (L{_parse_whole}); the
    line-by-line scan runs on partial heads and to name the first error.
    """

    __slots__ = ("_limits", "_term_from", "_pos", "_searched", "_empty", "_line", "_fields", "used")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        #: Its state moved on: the next head needs a new scanner (one whose first call
        #: parsed a whole head is as new, and serves the next head too).
        self.used = False
        self._term_from = 0  # where the next search for CRLF CRLF starts
        self._pos = 0  # start of the line being read
        self._searched = 0  # bytes before this hold no LF and no bare CR
        self._empty = 0  # empty lines before the request line
        self._line: _RequestLine | None = None
        self._fields: list[tuple[bytes, bytes]] = []

    def advance(self, buf: bytes | bytearray) -> RequestHead | None:
        """The head at the start of C{buf} if complete; raises L{HTTPError}."""
        max_head = self._limits.max_head
        end = buf.find(b"\r\n\r\n", self._term_from, max_head)
        if end >= 0:
            head = _parse_whole(bytes(buf[: end + 4]), self._limits)
            if head is not None:
                return head
        else:
            self._term_from = max(0, min(len(buf), max_head) - 3)
        self.used = True
        return self._scan(buf)

    def _scan(self, buf: bytes | bytearray) -> RequestHead | None:
        """Validate the lines completed since the last call, in order."""
        limits = self._limits
        n = min(len(buf), limits.max_head + 1)  # byte max_head decides already
        pos = self._pos
        searched = self._searched
        while True:
            i = buf.find(b"\n", searched, n)
            if i < 0:
                self._check_partial(buf, pos, searched, n)
                self._pos = pos
                self._searched = max(pos, n - 1)  # a final CR may yet get its LF
                return None
            self._check_partial(buf, pos, searched, i)
            if i >= limits.max_head:
                raise HTTPError(431, "request head too large")
            if i == pos or buf[i - 1] != _CR:
                raise _bad("bare LF in request head")
            line = bytes(buf[pos : i - 1])
            pos = searched = i + 1
            if self._line is None:
                if line:
                    self._line = _parse_request_line(line)
                else:
                    self._empty += 1
                    if self._empty > _MAX_EMPTY_LINES:
                        raise _bad("too many empty lines before the request line")
            elif line:
                field = _field(line, "header")
                if len(self._fields) >= limits.max_headers:
                    raise HTTPError(431, "too many header fields")
                self._fields.append(field)
            else:
                return _finish(self._line, self._fields, i + 1, limits)

    def _check_partial(self, buf: bytes | bytearray, start: int, searched: int, end: int) -> None:
        """
        C{buf[start:end]} is (part of) one line, without LF.  Raise the error
        whose deciding byte comes first, if any: a bare CR, a request line past
        its limit, or a head past its limit.
        """
        limits = self._limits
        offset = -1
        error = None
        # A CR at end - 1 may yet get its LF.  (Guarded: find() would read a
        # negative end as counting from the end of the buffer.)
        cr = buf.find(b"\r", searched, end - 1) if end - 1 > searched else -1
        if cr >= 0:
            offset, error = cr + 1, _bad("bare CR in request head")
        if self._line is None and end > start + limits.max_request_line:
            # The first byte past the limit decides, unless it is a CR that
            # may yet end the line: then the byte after it does.
            at = start + limits.max_request_line
            if buf[at] == _CR:
                at = at + 1 if end > at + 1 else -1
            if at >= 0 and (error is None or at < offset):
                offset, error = at, HTTPError(414, "request line too long")
        if end > limits.max_head and (error is None or limits.max_head < offset):
            error = HTTPError(431, "request head too large")
        if error is not None:
            raise error


def parse_head(data: bytes, limits: Limits = Limits()) -> tuple[RequestHead, int] | None:
    """
    The request head at the start of C{data} and its size in bytes, or L{None}
    if it is not complete yet.  Raises L{HTTPError} if it is already invalid.
    """
    head = _HeadScanner(limits).advance(data)
    return None if head is None else (head, head.size)


class HeadReader:
    """
    Reads one request head from bytes that arrive in pieces.

    Feed it until it returns the head.  It keeps every byte fed (the caller
    passes them on with the connection); the bytes past the head belong to
    the body or to the next request.  An error is sticky: once a feed has
    raised, every later feed raises the same L{HTTPError}.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self._buf = bytearray()
        self._scanner = _HeadScanner(limits)
        self._head: RequestHead | None = None
        self._error: HTTPError | None = None

    def feed(self, data: bytes) -> RequestHead | None:
        """
        Add C{data}; the head once complete (again on later feeds), else
        L{None}.  Raises L{HTTPError} as soon as the bytes so far are invalid
        or over a limit.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        if self._head is None:
            try:
                self._head = self._scanner.advance(self._buf)
            except HTTPError as e:
                self._error = e
                raise
        return self._head

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far, including any past the head."""
        return bytes(self._buf)


# -- framing a stream of requests ---------------------------------------------


class _State(enum.Enum):
    """Where a L{RequestFramer} is in the current request."""

    HEAD = "reading the head"
    BODY = "reading a Content-Length body"
    CHUNK_SIZE = "reading a chunk-size line"
    CHUNK_DATA = "reading chunk data"
    CHUNK_CRLF = "reading the CRLF after chunk data"
    TRAILER = "reading the trailer section"
    END = "request complete, End not yet returned"


_HEAD = _State.HEAD
_BODY = _State.BODY
_CHUNK_SIZE = _State.CHUNK_SIZE
_CHUNK_DATA = _State.CHUNK_DATA
_CHUNK_CRLF = _State.CHUNK_CRLF
_TRAILER = _State.TRAILER
_END = _State.END
_END_EVENT = End()


class RequestFramer:
    """
    Frames a stream of pipelined requests into L{Head}, L{Body} and L{End}
    events.

    Pull-based, so the caller can stop at any request boundary: after a
    L{Head} no byte of its body has been consumed, so C{event.raw +
    framer.unread()} is exactly what is left of the stream.  Body bytes are
    returned as soon as they arrive and are known to be valid framing (a
    client waiting for C{100 Continue}, or a large body, never stalls).
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._state = _HEAD
        self._scanner = _HeadScanner(limits)
        self._remaining = 0  # Content-Length bytes, or bytes of the current chunk, to come
        self._body_size = 0  # chunk data so far
        self._search = 0  # bytes of the current chunk or trailer line known to hold no LF
        self._trailer_size = 0
        self._trailer_fields = 0
        self._body_limit = limits.max_body
        self._eof = False
        self._error: HTTPError | None = None

    def set_body_limit(self, max_body: int | None) -> None:
        """Bound the body of the request whose L{Head} was just returned (its chunk data).

        For a reader that learns the limit only once it has routed the head (the dispatcher
        relaying requests: each service has its own C{max_body}).  A declared
        C{Content-Length} over it is the caller's to refuse, since the head is already
        returned.  The next head is checked against the L{Limits} again.
        """
        self._body_limit = max_body

    def feed(self, data: bytes) -> None:
        """Add bytes received from the client.  Never parses, never raises."""
        self._buf += data

    def eof(self) -> None:
        """The client closed its sending side; no more bytes will be fed."""
        self._eof = True

    def unread(self) -> bytes:
        """Every byte fed but not yet returned in an event."""
        return bytes(self._buf)

    @property
    def buffered(self) -> int:
        """How many bytes were fed but not yet returned in an event (without copying them)."""
        return len(self._buf)

    def next_event(self) -> Head | Body | End | None:
        """
        The next event, or L{None} until more bytes are fed.

        Raises L{HTTPError} for a malformed request, or for a request cut
        short by L{eof}; the framer is then dead and raises that error again
        on every call.
        """
        if self._error is not None:
            raise self._error
        try:
            event = self._next()
            if event is None and self._eof:
                self._check_eof()
        except HTTPError as e:
            self._error = e
            raise
        return event

    def lone_head(self, data: bytes) -> Head | None:
        """C{data} taken whole when it is exactly one bodiless request in the commonest form
        (L{_parse_common}) and nothing is buffered: the L{Head} that L{feed} then L{next_event}
        would give, its L{End} already taken (as L{take_end} would).  L{None} for anything
        else, with nothing consumed: L{feed} it then.  A keep-alive client's next request
        usually arrives so, and the relay skips the buffer and the scan for it.
        """
        limits = self._limits
        if (
            self._state is not _HEAD
            or self._buf
            or self._error is not None
            or len(data) > limits.max_head
            or not data.endswith(b"\r\n\r\n")
        ):
            return None
        # The match leaves no other blank line in data: it holds exactly this head.
        head = _parse_common(data, limits)
        if head is None or head.content_length:
            return None
        self._body_limit = limits.max_body
        return Head(head, data)

    def take_end(self) -> bool:
        """Take the L{End} that L{next_event} would return next, if it would (the
        message was its head alone): a service skips a call per bodiless request."""
        if self._state is _END and self._error is None:
            self._state = _HEAD
            return True
        return False

    def _next(self) -> Head | Body | End | None:
        state = self._state
        buf = self._buf
        if state is _HEAD:
            if not buf:
                return None
            head = self._scanner.advance(buf)
            if head is None:
                return None
            raw = bytes(buf[: head.size])
            del buf[: head.size]
            if self._scanner.used:
                self._scanner = _HeadScanner(self._limits)
            self._body_limit = self._limits.max_body
            if head.chunked:
                self._state = _CHUNK_SIZE
                self._body_size = 0
                self._search = 0
            elif head.content_length:
                self._state = _BODY
                self._remaining = head.content_length
            else:
                self._state = _END
            return Head(head, raw)
        if state is _END:
            self._state = _HEAD
            return _END_EVENT
        if state is _BODY:
            if not buf:
                return None
            take = min(self._remaining, len(buf))
            data = bytes(buf[:take])
            del buf[:take]
            self._remaining -= take
            if not self._remaining:
                self._state = _END
            return Body(data)
        return self._chunked()

    def _chunked(self) -> Body | None:
        """
        Validate as much chunked framing as has arrived; return it as one
        L{Body}.  An error past some valid bytes is raised on the next call, so
        the events before an error do not depend on how the bytes arrived.
        """
        buf = self._buf
        n = len(buf)
        pos = 0
        state = self._state
        limits = self._limits
        try:
            while True:
                if state is _CHUNK_DATA:
                    take = min(self._remaining, n - pos)
                    pos += take
                    self._remaining -= take
                    if self._remaining:
                        break
                    state = _CHUNK_CRLF
                elif state is _CHUNK_CRLF:
                    if n - pos >= 2:
                        if buf[pos] != _CR or buf[pos + 1] != 0x0A:
                            raise _bad("chunk data not followed by CRLF")
                        pos += 2
                        state = _CHUNK_SIZE
                    else:
                        if n > pos and buf[pos] != _CR:
                            raise _bad("chunk data not followed by CRLF")
                        break
                elif state is _CHUNK_SIZE:
                    i = buf.find(b"\n", pos + self._search, n)
                    if i < 0:
                        if n - pos >= _MAX_CHUNK_LINE:
                            raise _bad("chunk-size line too long")
                        self._search = n - pos
                        break
                    self._search = 0
                    if i + 1 - pos > _MAX_CHUNK_LINE:
                        raise _bad("chunk-size line too long")
                    if i == pos or buf[i - 1] != _CR:
                        raise _bad("bare LF in chunked body")
                    m = _CHUNK_LINE.fullmatch(buf, pos, i - 1)
                    if m is None:
                        raise _chunk_line_error(bytes(buf[pos : i - 1]))
                    size = int(m.group(1), 16)
                    self._body_size += size
                    if self._body_limit is not None and self._body_size > self._body_limit:
                        raise HTTPError(413, "request body too large")
                    pos = i + 1
                    if size:
                        self._remaining = size
                        state = _CHUNK_DATA
                    else:
                        self._trailer_size = 0
                        self._trailer_fields = 0
                        state = _TRAILER
                else:  # _TRAILER
                    cap = min(limits.max_head, _MAX_TRAILER_SECTION)
                    i = buf.find(b"\n", pos + self._search, n)
                    if i < 0:
                        if self._trailer_size + (n - pos) + 1 > cap:
                            raise HTTPError(431, "trailer section too large")
                        self._search = n - pos
                        break
                    self._search = 0
                    self._trailer_size += i + 1 - pos
                    if self._trailer_size > cap:
                        raise HTTPError(431, "trailer section too large")
                    if i == pos or buf[i - 1] != _CR:
                        raise _bad("bare LF in trailer")
                    if i == pos + 1:
                        pos = i + 1
                        state = _END
                        break
                    name, _ = _field(bytes(buf[pos : i - 1]), "trailer")
                    if name in FORBIDDEN_TRAILERS:
                        raise _bad(f"forbidden field in trailer: {name.decode('ascii')}")
                    self._trailer_fields += 1
                    if self._trailer_fields > limits.max_headers:
                        raise HTTPError(431, "too many trailer fields")
                    pos = i + 1
        except HTTPError as e:
            if not pos:
                raise
            # Return the valid bytes before the error; the next call raises it.
            self._error = e
        finally:
            self._state = state
        if not pos:
            return None
        data = bytes(buf[:pos])
        del buf[:pos]
        return Body(data)

    def _check_eof(self) -> None:
        """No event is ready and none will come: is a request cut short?"""
        if self._state is _HEAD:
            if self._buf.strip(b"\r\n"):
                raise _bad("connection closed in the middle of a request head")
        else:
            raise _bad("connection closed before the request body was complete")


def _chunk_line_error(line: bytes) -> HTTPError:
    """Say precisely why C{line} is not a valid chunk-size line."""
    if b"\r" in line:
        return _bad("bare CR in chunked body")
    rest = line.lstrip(b"0123456789abcdefABCDEF")
    digits = len(line) - len(rest)
    if digits == 0 or rest[:1] not in (b"", b";"):
        return _bad("invalid chunk size")
    if digits > 16:
        return _bad("chunk size too long")
    return _bad("invalid chunk extension")


# -- framing a service's responses (the dispatcher's relay) ---------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9]) [\t \x21-\x7e\x80-\xff]*\r\n")
_RESPONSE_FIELD = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*(" + _FIELD_CHAR + rb"*)\r\n")
_RESPONSE_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\r\n")
#: A whole response head at once (L{ResponseFramer}'s fast path): the status line and the field
#: lines L{_RESPONSE_FIELD} reads one at a time, in one match.
_WHOLE_RESPONSE_HEAD = re.compile(
    _STATUS_LINE.pattern + rb"((?:" + _TCHAR + rb"+:" + _FIELD_CHAR + rb"*\r\n)*)\r\n"
)
#: The largest response head (and trailer section) the dispatcher buffers.
MAX_RESPONSE_HEAD = 65536


class ResponseError(Exception):
    """A service broke HTTP response framing on a relayed connection: its client's
    connection is cut (never given a stitched or extra response)."""


@dataclass
class Piece:
    """Response bytes to pass on, in order; C{end}: the response to the current request is
    complete with them, and C{close}: the connection must close after it."""

    data: bytes
    end: bool = False
    close: bool = False


class _RState(enum.Enum):
    IDLE = "no request outstanding"
    HEAD = "reading the status line and header fields"
    BODY = "reading a Content-Length body"
    UNTIL_EOF = "reading a body that ends when the service closes"
    CHUNK_SIZE = "reading a chunk-size line"
    CHUNK_DATA = "reading chunk data"
    CHUNK_CRLF = "reading the CRLF after chunk data"
    TRAILER = "reading the trailer section"


class ResponseFramer:
    """
    Frames a service's responses, one request at a time, for a dispatcher that relays them.

    The dispatcher sends a service one request at a time (L{expect} says which method), passes
    the response's bytes on as they come, and must know where the response ends: to move on to
    the client's next request, and to notice a service that died in the middle of a response
    (after C{kill -9}, EOF alone would let the client take the next response as the rest of
    the cut one) or that sends more than one response (which would answer the client's next
    request, meant for another service).  It checks only what framing needs: the status line,
    C{Content-Length} / C{Transfer-Encoding: chunked} (one of them, once), C{Connection:
    close}, HTTP/1.0, and the statuses and methods without a body; the rest of the head is the
    service's business and reaches the client unchanged.  A protocol upgrade (101) is refused:
    the dispatcher relays HTTP only.  Bounded: a head or trailer section of at most
    L{MAX_RESPONSE_HEAD} bytes is buffered, body bytes pass through.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _RState.IDLE
        self._head_only = False
        self._remaining = 0
        self._close = False

    @property
    def idle(self) -> bool:
        """No response is outstanding."""
        return self._state is _RState.IDLE

    def expect(self, method: bytes) -> None:
        """A request for C{method} was sent: its response comes next."""
        if self._state is not _RState.IDLE:
            raise RuntimeError("a response is still outstanding")
        self._state = _RState.HEAD
        self._head_only = method == b"HEAD"

    def feed(self, data: bytes) -> list[Piece]:
        """Bytes from the service; the pieces to pass on, in order.  Raises L{ResponseError}."""
        state = self._state
        if state is _RState.IDLE:
            if data:
                raise ResponseError("bytes with no request outstanding")
            return []
        if state is _RState.HEAD and not self._buf:
            whole = self._whole(data)
            if whole is not None:
                return whole
        if state is _RState.BODY and not self._buf:
            # The common case: Content-Length body bytes pass through uncopied.
            take = min(self._remaining, len(data))
            self._remaining -= take
            if take < len(data):
                raise ResponseError("bytes after the end of the response")
            if self._remaining:
                return [Piece(data)]
            self._state = _RState.IDLE
            return [Piece(data, True, self._close)]
        self._buf += data
        out: list[Piece] = []
        while self._buf and self._state is not _RState.IDLE:
            piece = self._step()
            if piece is None:
                break
            out.append(piece)
        if self._state is _RState.IDLE and self._buf:
            raise ResponseError("bytes after the end of the response")
        return out

    def eof(self) -> list[Piece]:
        """The service closed its end; raises L{ResponseError} if a response was cut short."""
        if self._state is _RState.UNTIL_EOF and not self._buf:
            self._state = _RState.IDLE
            return [Piece(b"", True, True)]
        if self._state is not _RState.IDLE or self._buf:
            raise ResponseError("the service closed in the middle of a response")
        return []

    def _whole(self, data: bytes) -> list[Piece] | None:
        """The common case in one step: C{data} is one whole response, a head and its
        C{Content-Length} body, and nothing more; passed on as read, uncopied.

        C{None} for anything else (a head or body cut, a chunked, bodiless or interim
        response, anything L{_head} would refuse): the general path frames it, and must
        give the same bytes, ends and errors (tests/wire/test_httpframe.py checks both).
        """
        if self._head_only:
            return None
        end = data.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
        if end < 0:
            return None
        size = end + 4
        m = _WHOLE_RESPONSE_HEAD.fullmatch(data, 0, size)
        if m is None:
            return None
        status = int(m[2])
        if status < 200 or status == 204 or status == 304:
            return None
        close = m[1] == b"0"
        # The match proved every line a field line (no CR or LF in a value), so a name is
        # exactly what follows a CRLF up to the colon: the head lowered once, searched in C.
        low = data[:size].lower()
        if b"\r\ntransfer-encoding:" in low:
            return None
        at = low.find(b"\r\ncontent-length:")
        if at < 0 or low.find(b"\r\ncontent-length:", at + 17) >= 0:
            return None
        length = low[at + 17 : low.index(b"\r\n", at + 17)].strip(b" \t")
        at = low.find(b"\r\nconnection:")
        while at >= 0 and not close:
            close = b"close" in _tokens([low[at + 13 : low.index(b"\r\n", at + 13)]])
            at = low.find(b"\r\nconnection:", at + 13)
        if (
            length is None
            or not length.isdigit()
            or len(length.lstrip(b"0")) > _MAX_LENGTH_DIGITS
            or int(length) != len(data) - size
        ):
            return None
        self._close = close
        self._state = _RState.IDLE
        return [Piece(data, True, close)]

    def _step(self) -> Piece | None:
        buf = self._buf
        state = self._state
        if state is _RState.HEAD:
            end = buf.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
            if end < 0:
                if len(buf) >= MAX_RESPONSE_HEAD:
                    raise ResponseError("response head too large")
                return None
            raw = bytes(buf[: end + 4])
            del buf[: end + 4]
            return self._head(raw)
        if state is _RState.BODY or state is _RState.UNTIL_EOF:
            take = len(buf) if state is _RState.UNTIL_EOF else min(self._remaining, len(buf))
            data = bytes(buf[:take])
            del buf[:take]
            if state is _RState.UNTIL_EOF:
                return Piece(data)
            self._remaining -= take
            if self._remaining:
                return Piece(data)
            self._state = _RState.IDLE
            return Piece(data, True, self._close)
        if state is _RState.CHUNK_SIZE:
            m = _RESPONSE_CHUNK.match(buf)
            if m is None:
                if b"\n" in buf[:_MAX_CHUNK_LINE] or len(buf) >= _MAX_CHUNK_LINE:
                    raise ResponseError("bad chunk-size line")
                return None
            size = int(m.group(1), 16)
            line = bytes(buf[: m.end()])
            del buf[: m.end()]
            if size:
                self._remaining, self._state = size, _RState.CHUNK_DATA
            else:
                self._remaining, self._state = 0, _RState.TRAILER
            return Piece(line)
        if state is _RState.CHUNK_DATA:
            take = min(self._remaining, len(buf))
            data = bytes(buf[:take])
            del buf[:take]
            self._remaining -= take
            if not self._remaining:
                self._state = _RState.CHUNK_CRLF
            return Piece(data)
        if state is _RState.CHUNK_CRLF:
            if buf[:1] != b"\r" or (len(buf) >= 2 and buf[1] != 0x0A):
                raise ResponseError("chunk data not followed by CRLF")
            if len(buf) < 2:
                return None
            del buf[:2]
            self._state = _RState.CHUNK_SIZE
            return Piece(b"\r\n")
        # The trailer section: field lines until an empty one, bounded like a head.
        end = buf.find(b"\r\n")
        if end < 0:
            if self._remaining + len(buf) >= MAX_RESPONSE_HEAD:
                raise ResponseError("trailer section too large")
            return None
        line = bytes(buf[: end + 2])
        del buf[: end + 2]
        self._remaining += len(line)
        if self._remaining > MAX_RESPONSE_HEAD:
            raise ResponseError("trailer section too large")
        if line == b"\r\n":
            self._state = _RState.IDLE
            return Piece(line, True, self._close)
        if _RESPONSE_FIELD.fullmatch(line) is None:
            raise ResponseError("bad trailer field")
        return Piece(line)

    def _head(self, raw: bytes) -> Piece:
        m = _STATUS_LINE.match(raw)
        if m is None:
            raise ResponseError("bad status line")
        status = int(m.group(2))
        lengths: list[bytes] = []
        codings: list[bytes] = []
        close = m.group(1) == b"0"
        pos = m.end()
        while pos < len(raw) - 2:
            f = _RESPONSE_FIELD.match(raw, pos)
            if f is None:
                raise ResponseError("bad response header field")
            name = f.group(1).lower()
            if name == b"content-length":
                lengths.append(f.group(2).rstrip(b" \t"))
            elif name == b"transfer-encoding":
                codings.append(f.group(2).rstrip(b" \t").lower())
            elif name == b"connection":
                close = close or b"close" in _tokens([f.group(2)])
            pos = f.end()
        if status == 101:
            raise ResponseError("protocol upgrade on a relayed connection")
        if status < 200:
            if lengths or codings:
                raise ResponseError("framing on an interim response")
            return Piece(raw)  # 100 Continue, 103 Early Hints: the final response still comes
        self._close = close
        if (lengths and codings) or len(lengths) > 1 or len(codings) > 1:
            raise ResponseError("ambiguous response framing")
        if self._head_only or status in (204, 304):
            self._state = _RState.IDLE
            return Piece(raw, True, close)
        if codings:
            if codings != [b"chunked"]:
                raise ResponseError("a transfer coding other than chunked")
            self._state = _RState.CHUNK_SIZE
            return Piece(raw)
        if lengths:
            value = lengths[0]
            if not value.isdigit() or len(value.lstrip(b"0")) > _MAX_LENGTH_DIGITS:
                raise ResponseError("bad Content-Length")
            self._remaining = int(value)
            if not self._remaining:
                self._state = _RState.IDLE
                return Piece(raw, True, close)
            self._state = _RState.BODY
            return Piece(raw)
        # No framing: the body ends when the service closes, and so does the connection.
        self._close = True
        self._state = _RState.UNTIL_EOF
        return Piece(raw)
