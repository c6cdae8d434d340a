# -*- test-case-name: tests.service.test_runtime -*-
"""
twisted.web as a service instance runs it: the request, channel and site classes.

Authors see twisted.web's own C{Request} (L{ServiceRequest} adds only where bodies go: memory or
an anonymous memfd, since a jailed service has no temporary directory); L{MountRoot} mounts the
author's resource at each configured path; L{ServiceSite} turns each response into an access
record for the log daemon.  L{okws_twisted.testing} serves with these same classes, so an
author's test runs what production runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from urllib.parse import unquote_to_bytes

from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import NO_BODY_CODES, NO_CONTENT, NOT_MODIFIED, parse_qs, toChunk
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource, NoResource, Resource, _IEncodingResource
from zope.interface import provider

from okws_twisted.config.site import DEFAULT_SERVER_HEADER
from okws_twisted.interfaces import ITemplates
from okws_twisted.service.budget import BodyFiles
from okws_twisted.service.csrf import CsrfKey
from okws_twisted.wire.errorpage import RFC9110_PHRASES
from okws_twisted.wire.handoff import tls_summary
from okws_twisted.wire.httpframe import (
    RequestHead,
)
from okws_twisted.wire.logsender import RecordSender, RequestIds
from okws_twisted.wire.routing import host_key
from okws_twisted.wire.stamp import ResponseStamp

if TYPE_CHECKING:
    from okws_twisted.service.connection import ServiceConnection


def origin_target(head: RequestHead) -> bytes:
    """The request target twisted.web gets: an absolute-form target in origin form.

    The dispatcher routes C{GET http://host/p?q HTTP/1.1} by its path; the
    framer has already checked that the authority equals C{Host}.  twisted.web
    would take the whole URL as the path, so it gets C{/p?q}.
    """
    target = head.target
    if target[:1] == b"/" or target == b"*":
        return target
    return head.path + (b"?" + head.query if head.query else b"")


@provider(INonQueuedRequestFactory)
class ServiceRequest(server.Request):
    """A twisted.web request that tells its connection when it is answered.

    Request bodies live in memory, or in an anonymous C{memfd} above 100 KB
    while the instance's descriptor budget allows (L{BodyFiles}), never in a
    temporary file: a jailed service has no writable directory.  The framer
    has already bounded the body by the service's C{max_body}.

    Served by a L{ServiceSite}, its hot steps are lean (issue 14), with the
    results of twisted.web's own: C{__init__} sets twisted.web's attributes
    directly; C{process} sets the stamp's C{Server} and C{Date} once (twisted.web
    sets its own, then the stamp replaced them); the connection learns that the
    request is answered from C{finish}/C{connectionLost}, without a
    C{notifyFinish} Deferred per request; the first C{write} serialises the head
    straight from the response headers, in the same send as the body.
    C{tests.service.test_request} compares each with twisted.web's, and pins the
    private names they rely on.

    @ivar request_id: okws's id of this request, as in the access log (okws
        makes every id; a client's X-Request-Id header is not used).
    """

    #: Where bodies go when no instance runtime is behind the request (an author's test).
    unbudgeted = BodyFiles(cap=1 << 30)
    #: The stamp has set Server and Date (process).
    _okws_stamped = False
    #: The connection to tell when this request is answered, and when it started (process).
    _okws_conn: "ServiceConnection | None" = None
    _okws_processed = 0.0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        site = getattr(channel, "factory", None)
        if args or kwargs or not isinstance(site, ServiceSite):
            super().__init__(channel, *args, **kwargs)
            if isinstance(site, ServiceSite):
                self.okws_started = site.reactor.seconds()
                self.request_id = site.request_ids.next()
            else:
                self.okws_started = 0.0
                self.request_id = "-"
            return
        # What http.Request.__init__ and server.Request.__init__ (with Componentized's) set.
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = Headers()
        self.received_cookies = {}
        self.responseHeaders = Headers()
        self.cookies = []
        self.transport = channel.transport
        self.queued = False
        self._parsePOSTFormSubmission = channel.site._parsePOSTFormSubmission
        self._adapterCache = {}
        self.okws_started = site.reactor.seconds()
        self.request_id = site.request_ids.next()

    def gotLength(self, length: int | None) -> None:
        conn = getattr(self.channel, "okws_connection", None)
        files = conn.runtime.bodies if conn is not None else self.unbudgeted
        self.content = files.new(length)

    def process(self) -> None:
        channel = self.channel
        conn = getattr(channel, "okws_connection", None)
        if conn is not None:
            conn.request_started()
            self._okws_conn = conn
            self._okws_processed = conn.runtime.reactor.seconds()
        site = channel.site
        stamp = getattr(site, "stamp", None)
        if stamp is None:
            super().process()
            return
        # server.Request.process, with the stamp's Server and Date set once.
        self.site = site
        raw = self.responseHeaders._rawHeaders
        if stamp.server is not None:
            raw[b"Server"] = [stamp.server]
        raw[b"Date"] = [stamp.date()]
        self._okws_stamped = True
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        if self.path == b"*":
            # twisted.web's answer to OPTIONS * (empty 200; 405 for another method), with the
            # stamp's Server and Date (through super().process() it kept twisted.web's own:
            # its name and version).
            self._handleStar()
            return
        try:
            resrc = site.getResourceFor(self)
            if _IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    # twisted.web's process() sets Server (its name and exact version) and Date
    # (formatted per response), then calls render(), or processingFailed() if
    # finding the resource raised: where process() above did not stamp the
    # response (a site without a stamp), the stamp replaces the two there.

    def render(self, resrc: Any) -> None:
        if not self._okws_stamped:
            self._stamp()
        super().render(resrc)

    def processingFailed(self, reason: Any) -> Any:
        if not self._okws_stamped:
            self._stamp()
        return super().processingFailed(reason)

    def _stamp(self) -> None:
        stamp = getattr(getattr(self, "site", None), "stamp", None)
        if stamp is None:
            return
        headers = self.responseHeaders
        headers.setRawHeaders(b"date", [stamp.date()])
        if stamp.server is None:
            headers.removeHeader(b"server")
        else:
            headers.setRawHeaders(b"server", [stamp.server])

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """As twisted.web's; only a POST can carry form arguments in its body, so only
        a POST goes through twisted.web's (which reads the body's size and type)."""
        if command == b"POST":
            super().requestReceived(command, path, version)
            return
        self.content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        if b"?" in path:
            self.path, query = path.split(b"?", 1)
            self.args = parse_qs(query, 1)
        else:
            self.path = path
            self.args = {}
        self.process()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """As twisted.web's (C{responseHeaders.setRawHeaders(name, [value])}), inlined for bytes."""
        if type(value) is bytes:
            # Headers' _sanitizeLinearWhitespace: line breaks become one space.
            self.responseHeaders._rawHeaders[_nameEncoder.encode(name)] = [b" ".join(value.splitlines())]
        else:
            super().setHeader(name, value)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """As twisted.web's, with RFC 9110's reason phrase where twisted.web has an older one."""
        if message is None and code in RFC9110_PHRASES:
            message = RFC9110_PHRASES[code].encode("ascii")
        super().setResponseCode(code, message)

    def write(self, data: bytes) -> None:
        """As twisted.web's; the first write of a plain response sends head and body at once."""
        if (
            self.startedWriting
            or self._inFakeHead
            or self._encoder is not None
            or self.finished
            or self._disconnected
            or self.lastModified is not None
            or self.etag is not None
            or not self._okws_stamped
        ):
            super().write(data)
            return
        # server.Request.write's default Content-Type, then http.Request.write's head.
        headers = self.responseHeaders
        raw = headers._rawHeaders
        code = self.code
        length = raw.get(b"Content-Length")
        if (
            code not in _NO_DEFAULT_TYPE
            and not raw.get(b"Content-Type")
            and self.defaultContentType is not None
            and not (length and length[0] == b"0")
        ):
            raw[b"Content-Type"] = [self.defaultContentType]
        self.startedWriting = 1
        version = self.clientproto
        method = self.method
        if version == b"HTTP/1.1" and not length and method != b"HEAD" and code not in NO_BODY_CODES:
            raw[b"Transfer-Encoding"] = [b"chunked"]
            self.chunked = 1
        if self.cookies:
            headers.setRawHeaders(b"Set-Cookie", self.cookies)
        parts = [version, b" %d " % code, self.code_message, b"\r\n"]
        for name, values in raw.items():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        channel = self.channel
        if method == b"HEAD" or code in NO_BODY_CODES:
            channel.writeSequence(parts)
            self.write = _discard  # type: ignore[method-assign]
            return
        self.sentLength += len(data)
        if data:
            if self.chunked:
                parts += toChunk(data)
            else:
                parts.append(data)
        channel.writeSequence(parts)

    def finish(self) -> None:
        super().finish()
        if self.finished:
            self._answered(None)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._answered(reason)

    def _answered(self, result: Any) -> None:
        """Tell the connection, once, that this request is over (L{None}: answered; else why not)."""
        conn = self._okws_conn
        if conn is not None:
            self._okws_conn = None
            conn.request_finished(result, self, self._okws_processed)


def _discard(data: bytes) -> None:
    """A HEAD or bodiless response's write (as twisted.web's C{lambda data: None})."""


#: The codes server.Request.write gives no default Content-Type.
_NO_DEFAULT_TYPE = (NOT_MODIFIED, NO_CONTENT)


class MountRoot(Resource):
    """The site root of a service process: the service's resource, mounted at each of its paths.

    The dispatcher routes by path prefix; here the matched prefix is moved
    from C{request.postpath} to C{request.prepath}, so the author's resource
    sees only the part of the path below its mount point (for C{/hello/x},
    C{postpath == [b"x"]}; for C{/hello} and C{/hello/}, C{postpath == []}).
    """

    def __init__(self, resource: IResource, paths: tuple[str, ...]) -> None:
        super().__init__()
        self.resource = resource
        self.mount_at(paths)

    def mount_at(self, paths: tuple[str, ...]) -> None:
        """Serve the resource at these paths (again, after a reload)."""
        self.mounts = sorted(
            ([seg.encode("ascii") for seg in p.strip("/").split("/")] if p != "/" else [] for p in paths),
            key=len,
            reverse=True,
        )

    def getChildWithDefault(self, name: bytes, request: server.Request) -> IResource:
        # Called once, for the first segment; Site has already moved it to prepath.
        segments = [name, *request.postpath]
        for mount in self.mounts:
            if segments[: len(mount)] == mount:
                rest = segments[len(mount) :]
                request.prepath = mount[:]
                request.postpath = [] if rest == [b""] else rest
                return self.resource
        return NoResource()

    def render(self, request: server.Request) -> bytes:
        # Only reached for a request with an empty path, which the framer refuses.
        return NoResource().render(request)


class ServiceChannel(http.HTTPChannel):
    """twisted.web's channel, fed requests the framer has already parsed.

    The framer (L{okws_twisted.wire.httpframe.RequestFramer}) is the one
    authority on framing, and its head has every field twisted.web's line
    parser would find: L{head_received} builds the request from it, as
    C{lineReceived}, C{headerReceived} and C{allHeadersReceived} would from the
    same bytes, so a head is parsed once.  The body, as the framer passes it
    on, goes through twisted.web's own transfer decoders (L{body_received}).
    C{tests.service.test_channel} checks that twisted.web's parser builds the
    same request from the same bytes (it catches a Twisted upgrade changing the
    steps this class repeats).

    C{timeOut} (C{keepalive_timeout}) is reset only when bytes are fed; while
    a request body is arriving, C{body_timeout} (L{ServiceConnection}'s body
    deadline) decides, so the idle timer is re-armed instead of closing.
    """

    okws_connection: "ServiceConnection | None" = None
    #: Whether requestFactory takes no queue position (INonQueuedRequestFactory), asked once.
    _nonqueued: bool | None = None
    #: The pending idle check (a deadline or a DelayedCall), when it is due, and when the
    #: idle period began (see setTimeout).
    _idle_call: Any = None
    _idle_due = 0.0
    _active_at = 0.0

    def head_received(self, head: RequestHead, persistent: bool) -> None:
        """Start a request from a framed head (the connection feeds one at a time).

        @param persistent: the connection may carry another request after this
            one (HTTP/1.1, no C{close}, under C{max_requests_per_connection}).
        """
        self.resetTimeout()
        nonqueued = self._nonqueued
        if nonqueued is None:
            nonqueued = self._nonqueued = INonQueuedRequestFactory.providedBy(self.requestFactory)
        if nonqueued:
            request = self.requestFactory(self)
        else:
            request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        # As addRawHeader would: the canonical name; the framer has refused any value with a
        # CR or LF, so there is no line break for _sanitizeLinearWhitespace to replace.
        fields = request.requestHeaders._rawHeaders
        canonical = _nameEncoder.encode
        for name, value in head.headers:
            key = canonical(name)
            values = fields.get(key)
            if values is None:
                fields[key] = [value]
            else:
                values.append(value)
        # What lineReceived keeps for allContentReceived.
        self._command = head.method
        self._path = origin_target(head)
        self._version = head.version
        if b"Cookie" in fields:
            request.parseCookies()
        self.persistent = persistent
        if not persistent and head.version == b"HTTP/1.1":
            # As checkPersistence answers a request that asked to close.
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        if head.chunked:
            self.length = None
            self._transferDecoder = http._ChunkedTransferDecoder(request.handleContentChunk, self._finishRequestBody)
        elif head.content_length:
            self.length = head.content_length
            self._transferDecoder = http._IdentityTransferDecoder(
                head.content_length, request.handleContentChunk, self._finishRequestBody
            )
        else:
            self.length = 0
        request.gotLength(self.length)
        if head.expect_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()

    def body_received(self, data: bytes) -> None:
        """Body bytes exactly as received (chunk framing included), as framed."""
        self.resetTimeout()
        self.rawDataReceived(data)

    # The idle timer (TimeoutMixin's API: twisted.web pauses it with setTimeout(None) for
    # each request and restores it after, and resets it when bytes arrive), kept lazily:
    # setting, pausing and resetting only note the time; one check, due at the end of
    # the idle period it was armed for, times the connection out if it has been idle for
    # timeOut since, or waits for the rest.  A busy connection costs one timer per
    # timeOut seconds, not two per request.

    def setTimeout(self, period: float | None) -> float | None:
        previous = self.timeOut
        self.timeOut = period
        if period is not None:
            now = self._now()
            self._active_at = now
            call = self._idle_call
            if call is None:
                self._idle_due = now + period
                self._idle_call = self.callLater(period, self._idle_check)
            elif now + period < self._idle_due - 1e-9:
                # Sooner than the pending check: one for the new period instead.
                call.cancel()
                self._idle_due = now + period
                self._idle_call = self.callLater(period, self._idle_check)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None and self._idle_call is not None:
            self._active_at = self._now()

    def _now(self) -> float:
        return self._clock().seconds()  # type: ignore[no-any-return]

    def _clock(self) -> Any:
        """The site's reactor (the global one for a channel without a site)."""
        site = getattr(self, "site", None)
        if site is not None:
            return site.reactor
        from twisted.internet import reactor

        return reactor

    def _idle_check(self) -> None:
        self._idle_call = None
        period = self.timeOut
        if period is None:
            return  # paused (a request is being answered): armed again by setTimeout
        due = self._active_at + period
        now = self._now()
        if now + 1e-9 >= due:
            self.timeoutConnection()
            return
        # Active since: check again at the end of this idle period (an arbitrary delay,
        # so on the reactor itself, not on the deadline queues, which are per delay).
        self._idle_due = due
        self._idle_call = self._clock().callLater(due - now, self._idle_check)

    def timeoutConnection(self) -> None:
        conn = self.okws_connection
        if conn is not None and conn.in_body:
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()


class ServiceSite(server.Site):
    """The twisted.web site of one service instance.

    @ivar templates: what its resources render templates with (an
        L{ITemplates}: the publisher's, through
        L{okws_twisted.service.templateclient.PublisherClient}; in
        L{okws_twisted.testing}, the test's own).
    """

    requestFactory = ServiceRequest
    protocol = ServiceChannel
    displayTracebacks = False
    #: No "Starting factory <...ServiceSite object at 0x...>" in the log per process.
    noisy = False

    def __init__(self, resource: IResource, templates: ITemplates | None = None, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor)
        self.templates = templates
        #: Every response's Date and Server (the runtime's, from [okws] server_header).
        self.stamp = ResponseStamp(self.reactor, DEFAULT_SERVER_HEADER)

    #: The service's CSRF key (set by the runtime from the secret the launcher sent);
    #: L{None}: every CSRF check fails (closed).
    csrf: CsrfKey | None = None
    #: The log client (set by the runtime); L{None}: no access records.
    records: RecordSender | None = None
    #: What C{self.db} calls (an L{okws_twisted.interfaces.IDatabase}, set by the runtime for a
    #: service with C{db}); L{None}: no database.
    db: Any = None
    #: Send records for every response (else only for status 400 and up, for error.log).
    access_records = True
    request_ids = RequestIds("-")

    def log(self, request: server.Request) -> None:
        """Send an access record to the log daemon (instead of twisted.web's own log).

        Called by twisted.web as the response finishes: only the record's raw values are
        gathered here (L{RecordSender.access}); they become JSON text when the batch is sealed,
        all of a batch in one loop, which costs the request path less.  The daemon checks it
        as any record (L{okws_twisted.logd.format}).
        """
        records = self.records
        code = request.code
        if records is None or (code < 400 and not self.access_records):
            return
        now = self.reactor.seconds()
        headers = request.requestHeaders
        tls = getattr(request.channel.transport, "tls", None) if request.channel is not None else None
        conn = getattr(request.channel, "okws_connection", None)
        records.access(
            getattr(request, "okws_started", 0.0) or now,
            now,
            getattr(request.getClientAddress(), "host", None) or "-",
            request.method,
            request.uri,
            request.clientproto,
            code,
            request.sentLength,
            getattr(request, "request_id", "-"),
            headers.getRawHeaders(b"referer"),
            headers.getRawHeaders(b"user-agent"),
            tls_summary(tls) if tls is not None else None,
            conn.host if conn is not None else host_key(request.getHeader(b"host")),
        )


