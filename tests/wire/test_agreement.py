"""
The dispatcher's reader and the service's framer agree on every request.

okws reads each request twice: the dispatcher reads the head with
L{okws_twisted.wire.httpframe.HeadReader} to route it, and the service that gets
the connection frames the whole stream with
L{okws_twisted.wire.httpframe.RequestFramer} before twisted.web sees it.  If they
ever disagreed about where a request ends, or about what it is, a client
could smuggle a request past the router (RFC 9112 section 11.2).

L{model} replays a byte stream the way a live site handles it: the
dispatcher reads and routes the first head (404, 413 by the service's
C{max_body}), the routed service frames requests until one belongs to another
service, hands the rest back, and so on.  At every request boundary it checks
that a C{HeadReader} started there (as after a handback) reads exactly the
head the framer read, and that both route it the same way.

Every case of L{tests.http_corpus} goes through the model, which must also
predict the corpus's expectations: the same requests served by the same
services, cut at the same byte boundaries, and the same refusals.  A
hypothesis property does the same for generated valid pipelined streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.wire.httpframe import (
    FORBIDDEN_TRAILERS,
    Body,
    End,
    Head,
    HeadReader,
    HTTPError,
    Limits,
    RequestFramer,
    RequestHead,
)
from okws_twisted.wire.routing import RouteTable, host_key
from tests.http_corpus import (
    CORPUS,
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    ROUTES,
    Case,
)

ROUTE_TABLE = RouteTable([(None, prefix, service) for prefix, service in ROUTES.items()])
HEAD_LIMITS = Limits(max_request_line=MAX_REQUEST_LINE, max_head=MAX_HEAD, max_headers=MAX_HEADERS)


def service_limits(service: str) -> Limits:
    """The framer's limits in C{service}'s process (the site's, plus its max_body)."""
    return Limits(
        max_request_line=MAX_REQUEST_LINE, max_head=MAX_HEAD, max_headers=MAX_HEADERS, max_body=MAX_BODY[service]
    )


class Disagreement(AssertionError):
    """The dispatcher's reader and the service's framer read the same bytes differently."""


@dataclass
class Served:
    """A request the model hands to a service, framed exactly."""

    service: str
    head: RequestHead
    raw: bytes  # head and body bytes, exactly as on the wire
    body_bytes: int  # bytes after the head (chunk framing included)


@dataclass
class Refused:
    """okws answers C{status} itself; C{by} is "dispatcher" or the framing service."""

    status: int
    reason: str
    by: str


@dataclass
class Outcome:
    served: list[Served] = field(default_factory=list)
    refused: Refused | None = None
    #: The stream ended inside a request (the connection would wait, or close on EOF).
    incomplete: bool = False


def dispatcher_read(data: bytes) -> RequestHead | HTTPError | None:
    """What the dispatcher's reader makes of a stream starting at a request."""
    try:
        return HeadReader(HEAD_LIMITS).feed(data)
    except HTTPError as e:
        return e


def model(data: bytes, eof: bool = False) -> Outcome:
    """Replay C{data} (then EOF if C{eof}) through dispatcher and services; check agreement."""
    out = Outcome()
    pos = 0
    while pos < len(data):
        read = dispatcher_read(data[pos:])
        if isinstance(read, HTTPError):
            out.refused = Refused(read.status, read.reason, "dispatcher")
            return out
        if read is None:
            # The dispatcher waits for the rest of the head, or drops the connection on EOF.
            out.incomplete = True
            return out
        if read.path == b"*":
            out.refused = Refused(200, "OPTIONS *", "dispatcher")
            return out
        route = ROUTE_TABLE.route(read.host, read.path)
        if route is None:
            out.refused = Refused(404, "no route", "dispatcher")
            return out
        service = route.service
        if read.content_length is not None and read.content_length > MAX_BODY[service]:
            out.refused = Refused(413, "declared body over max_body", "dispatcher")
            return out
        pos = _serve(data, pos, read, service, eof, out)
        if pos is None:
            return out
    return out


def _serve(data: bytes, pos: int, first: RequestHead, service: str, eof: bool, out: Outcome) -> int | None:
    """
    Frame C{data[pos:]} in C{service} as the runtime does; return where a
    request for another service starts (the handback), or None when done.
    """
    framer = RequestFramer(service_limits(service))
    framer.feed(data[pos:])
    if eof:
        framer.eof()
    offset = pos  # stream offset of the next byte the framer returns
    current: Served | None = None
    while True:
        try:
            event = framer.next_event()
        except HTTPError as e:
            out.refused = Refused(e.status, e.reason, service)
            return None
        if event is None:
            out.incomplete = current is not None or bool(framer.unread().strip(b"\r\n"))
            return None
        if isinstance(event, Head):
            expected = first if offset == pos else dispatcher_read(data[offset:])
            if not isinstance(expected, RequestHead) or expected != event.head:
                raise Disagreement(
                    f"at byte {offset}: the dispatcher's reader gives {expected!r}, the framer {event.head!r}"
                )
            if event.raw != data[offset : offset + event.head.size]:
                raise Disagreement(f"at byte {offset}: Head.raw is not the bytes received")
            # The service's rule (ServiceRuntime.owns): its own route, on the same host as the first request.
            owner = ROUTE_TABLE.route(event.head.host, event.head.path)
            mine = owner is not None and owner.service == service and host_key(event.head.host) == host_key(first.host)
            if offset != pos and not mine:
                return offset  # handed back with every unread byte
            current = Served(service, event.head, event.raw, 0)
            offset += len(event.raw)
        elif isinstance(event, Body):
            assert current is not None
            if event.data != data[offset : offset + len(event.data)]:
                raise Disagreement(f"at byte {offset}: Body is not the bytes received")
            current.raw += event.data
            current.body_bytes += len(event.data)
            offset += len(event.data)
        else:
            assert isinstance(event, End) and current is not None
            if current.head.content_length is not None and current.body_bytes != current.head.content_length:
                raise Disagreement(f"{current.body_bytes} body bytes framed for Content-Length {current.head.content_length}")
            out.served.append(current)
            current = None


class CorpusAgreementTests(SynchronousTestCase):
    """Each corpus case, read by both readers, as the live site would."""

    def check(self, case: Case) -> None:
        try:
            out = model(case.raw, eof=case.half_close)
        except Disagreement as e:
            self.fail(f"{case.name}: {e}")
        served = [e for e in case.exchanges if not e.refused]
        self.assertEqual(
            [(s.service, s.head.path) for s in out.served],
            [(e.service, e.path) for e in served],
            f"{case.name}: served requests",
        )
        for s, e in zip(out.served, served):
            self.assertEqual(s.raw, e.request, f"{case.name}: framing of the request to {e.path!r}")
        last = case.exchanges[-1]
        if last.refused:
            self.assertIsNotNone(out.refused, f"{case.name}: expected {last.status}, nothing refused ({out})")
            assert out.refused is not None
            self.assertEqual(out.refused.status, last.status, f"{case.name}: {out.refused}")
            if len(case.exchanges) > 1:
                # A later request on a kept-alive connection never reaches the dispatcher.
                self.assertNotEqual(out.refused.by, "dispatcher", case.name)
        else:
            self.assertIsNone(out.refused, f"{case.name}")
            self.assertFalse(out.incomplete, f"{case.name}: stream ends inside a request")

    def test_corpus_is_substantial(self) -> None:
        valid = [c for c in CORPUS if not c.refused]
        refused = [c for c in CORPUS if c.refused]
        self.assertGreaterEqual(len(valid), 40)
        self.assertGreaterEqual(len(refused), 100)
        self.assertEqual(
            {e.status for c in refused for e in c.exchanges if e.refused}, {200, 400, 404, 413, 414, 431, 501, 505}
        )

    def test_refusals_agree_on_head_errors(self) -> None:
        """A head the dispatcher refuses, the framer refuses with the same status and reason."""
        for case in CORPUS:
            read = dispatcher_read(case.raw)
            framer = RequestFramer(HEAD_LIMITS)
            framer.feed(case.raw)
            try:
                event = framer.next_event()
            except HTTPError as e:
                event = e
            if isinstance(read, HTTPError) or isinstance(event, HTTPError):
                self.assertIsInstance(read, HTTPError, f"{case.name}: framer refused, reader did not")
                self.assertIsInstance(event, HTTPError, f"{case.name}: reader refused, framer did not")
                self.assertEqual((read.status, read.reason), (event.status, event.reason), case.name)
            else:
                self.assertIsInstance(event, Head, case.name)
                self.assertEqual(read, event.head, case.name)

    def test_bytewise_arrival_changes_nothing(self) -> None:
        """The model's answer is the same when the bytes arrive one at a time (reader side)."""
        for case in CORPUS:
            reader = HeadReader(HEAD_LIMITS)
            result: object = None
            try:
                for i in range(len(case.raw)):
                    result = reader.feed(case.raw[i : i + 1])
                    if result is not None:
                        break
            except HTTPError as e:
                result = (e.status, e.reason)
            whole = dispatcher_read(case.raw)
            if isinstance(whole, HTTPError):
                whole = (whole.status, whole.reason)
            self.assertEqual(result, whole, case.name)


def _add_case_tests() -> None:
    for case in CORPUS:

        def test(self: CorpusAgreementTests, case: Case = case) -> None:
            self.check(case)

        test.__name__ = f"test_{case.name}"
        test.__doc__ = f"{case.name} ({case.rfc}): {' '.join(map(str, case.statuses))}"
        setattr(CorpusAgreementTests, test.__name__, test)


_add_case_tests()


# -- generated valid pipelined streams ------------------------------------------

_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PCHAR = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~!$&'()*+,;=:@"
_VCHAR = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))

tokens = st.binary(min_size=1, max_size=12).map(lambda b: bytes(_TCHAR[x % len(_TCHAR)] for x in b))
segments = st.binary(min_size=1, max_size=8).map(lambda b: bytes(_PCHAR[x % len(_PCHAR)] for x in b))
field_values = st.binary(max_size=24).map(
    lambda b: bytes(_VCHAR[x % len(_VCHAR)] if i % 5 else 0x20 for i, x in enumerate(b)).strip(b" ")
)
# Header names a generator may add freely: not framing, routing or control fields.
_RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade", b"te", b"trailer"}
extra_fields = st.lists(
    st.tuples(tokens.filter(lambda t: t.lower() not in _RESERVED), field_values), max_size=4
)
trailer_fields = st.lists(
    st.tuples(tokens.filter(lambda t: t.lower() not in _RESERVED | FORBIDDEN_TRAILERS), field_values), max_size=2
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str, bytes]:
    """One valid request: (bytes, service, routing path)."""
    prefix = draw(st.sampled_from(sorted(ROUTES)))
    service = ROUTES[prefix]
    path = prefix.encode() + b"".join(b"/" + s for s in draw(st.lists(segments, max_size=3)))
    query = draw(st.one_of(st.just(b""), segments.map(lambda s: b"?" + s)))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    target = path + query
    fields = []
    if draw(st.booleans()) and version == b"HTTP/1.1":
        target = b"http://localhost" + target
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.append(b"Host: localhost")
    fields += [n + b": " + v for n, v in draw(extra_fields)]
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"]) | tokens)
    if method == b"CONNECT":
        method = b"GET"  # refused whatever its target (see the corpus)
    body_kind = draw(st.sampled_from(["none", "length", "chunked"] if version == b"HTTP/1.1" else ["none", "length"]))
    body = b""
    if body_kind == "length":
        data = draw(st.binary(max_size=min(200, MAX_BODY[service])))
        fields.append(b"Content-Length: %d" % len(data))
        body = data
    elif body_kind == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4)):
            ext = draw(st.one_of(st.just(b""), tokens.map(lambda t: b";" + t), tokens.map(lambda t: b";" + t + b"=" + t)))
            body += b"%x" % len(data) + ext + b"\r\n" + data + b"\r\n"
        body += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in draw(trailer_fields)) + b"\r\n"
    draw(st.randoms()).shuffle(fields)
    blank = b"\r\n" if draw(st.integers(0, 9)) == 0 else b""
    raw = blank + b"".join(x + b"\r\n" for x in [method + b" " + target + b" " + version, *fields]) + b"\r\n" + body
    return raw, service, path


class GeneratedStreamTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(requests(), min_size=1, max_size=5))
    def test_valid_pipelined_streams_agree(self, reqs: list[tuple[bytes, str, bytes]]) -> None:
        """Every generated request is served whole, by its service, with both readers agreeing."""
        data = b"".join(r for r, _, _ in reqs)
        out = model(data)
        self.assertIsNone(out.refused)
        self.assertFalse(out.incomplete)
        self.assertEqual([(s.service, s.head.path, s.raw) for s in out.served], [(s, p, r) for r, s, p in reqs])

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(requests(), min_size=1, max_size=3), st.integers(0, 10_000), st.integers(0, 255))
    def test_one_changed_byte_never_splits_readers(self, reqs: list[tuple[bytes, str, bytes]], where: int, byte: int) -> None:
        """Change one byte of a valid stream: the readers may refuse it, but they never disagree."""
        data = bytearray(b"".join(r for r, _, _ in reqs))
        data[where % len(data)] = byte
        for eof in (False, True):
            try:
                out = model(bytes(data), eof=eof)
            except Disagreement as e:
                self.fail(str(e))
            if out.refused is not None:
                self.assertIn(out.refused.status, {400, 404, 405, 413, 414, 431, 505})

