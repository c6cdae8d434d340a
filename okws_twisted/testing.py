# -*- test-case-name: tests.test_testing -*-
"""
Rendering a service in memory, for authors' trial tests.

L{render} serves one request to a resource through the same code a service
process runs, with no process and no socket: the production site, channel and
request classes (L{ServiceSite}, its C{HTTPChannel} parsing the raw request
bytes, L{ServiceRequest}, which keeps a body over 100 KB in an anonymous
memfd as a jailed service must), traversal and error pages. Only the
connection is fake: a C{StringTransport} that records what the server writes. The written bytes are then read back by an
HTTP client parser that is not Twisted's (the standard library's), so a test
sees what a client on the wire would.

Example::

    from twisted.trial.unittest import SynchronousTestCase
    from okws_twisted.testing import render
    from services.hello import Hello

    class HelloTests(SynchronousTestCase):
        def test_name(self):
            response = self.successResultOf(render(Hello(), query={"name": "Ada"}))
            self.assertEqual(response.code, 200)
            self.assertIn("Hello, Ada!", response.text())

A service that renders templates is tested with them: C{templates} is a
directory (the site's C{templates/}) or a mapping from template name to
source, rendered exactly as a service process renders what the template
publisher sends (same names refused, same autoescaping, same error pages)::

    response = self.successResultOf(
        render(Hello(), query={"name": "<b>"}, templates={
            "hello.html": "<p>Hello, {{ name }}!</p>",
        })
    )

A service that uses C{self.db} is tested with an L{InMemoryDatabase}: an
SQLite database in memory, built from the site's own queries and schema
files, granting what the service's section grants, run by the proxy's own
code (same results, same types, same errors)::

    db = InMemoryDatabase.for_service("site.ini", "guestbook")
    response = self.successResultOf(render(Guestbook(), "POST", body=..., db=db, templates="templates"))
    self.assertEqual(db.connection.execute("SELECT count(*) FROM messages").fetchone()[0], 1)

A service is served with a CSRF secret (the fixed L{TEST_CSRF_SECRET}, for the service named
C{service}, C{"test"} by default), so its forms get tokens and its POSTs are checked as in
production: a POST without a token gets the 403 page. C{csrf=True} sends a valid CSRF cookie
and token with the request; L{csrf} makes a pair for a test that builds its own::

    response = self.successResultOf(
        render(Guestbook(), "POST", body=b"message=hi", csrf=True, headers={
            "Content-Type": "application/x-www-form-urlencoded",
        }, templates="templates")
    )

This module belongs to the author's one-process world: it imports nothing from
the launcher, the dispatcher or the process runtime.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from typing import Any, Union
from urllib.parse import quote, urlencode

from jinja2 import BaseLoader
from okws_twisted import sqlqueries
from okws_twisted.dbproxy import engine
from okws_twisted.interfaces import IDatabase
from okws_twisted.service.database import ERROR_CLASSES, QueryRefused, check_call, decode_result
from okws_twisted.wire import dbvalues
from okws_twisted.wire.dbchannel import OK, Grant
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from zope.interface import implementer

from okws_twisted.interfaces import ITemplates
from okws_twisted.pubd.tree import TemplateTree, etag_of
from okws_twisted.service.csrf import CsrfKey, cookie_name, new_nonce
from okws_twisted.service.rendering import TemplateRenderer
from okws_twisted.service.templatecache import TemplateCache
from okws_twisted.service.web import ServiceRequest, ServiceSite
from okws_twisted.templating import (
    MappingLoader,
    TreeLoader,
    default_error_templates,
    render_error_pages,
)
from okws_twisted.wire.errorpage import ErrorPages
from okws_twisted.wire.logsender import RequestIds
from okws_twisted.wire.templatechannel import (
    Absent,
    NameRefused,
    Source,
    TemplateAbsent,
    check_name,
)

__all__ = ["InMemoryDatabase", "TEST_CSRF_SECRET", "RenderedResponse", "csrf", "render"]

#: The CSRF secret L{render} serves with: public, for tests only.
TEST_CSRF_SECRET = b"okws_twisted.testing CSRF secret"

_Text = Union[str, bytes]
_HeaderValues = Union[_Text, Sequence[_Text]]
_TemplateSources = Union[Mapping[str, str], str, "os.PathLike[str]"]

# RFC 9110 token characters, for methods and header names.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Anything that could end a request line or a header early.
_BREAKS_LINE = re.compile(rb"[\x00-\x1f\x7f ]")
_PATH_SAFE = "!$&'()*+,-./:;=?@[]_~%"
_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}


@dataclass(frozen=True)
class RenderedResponse:
    """
    A complete HTTP response as a client received it.

    @ivar code: the status code.
    @ivar headers: the response headers as twisted.web L{Headers}
        (case-insensitive names, several values per name), the type a
        twisted.web author already reads request headers with. Ask with
        C{bytes} names for C{bytes} values, C{str} names for C{str} values:
        C{response.headers.getRawHeaders("content-type")}.
    @ivar body: the body after transfer decoding (chunks joined); empty for
        C{HEAD} and for 204/304.
    """

    code: int
    headers: Headers
    body: bytes

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as C{encoding} (strictly: a wrong guess raises)."""
        return self.body.decode(encoding)


def render(
    resource: IResource,
    method: _Text = b"GET",
    path: _Text = b"/",
    *,
    query: Mapping[_Text, _HeaderValues] | None = None,
    headers: Mapping[_Text, _HeaderValues] | None = None,
    body: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 40000),
    reactor: IReactorTime | None = None,
    templates: _TemplateSources | ITemplates | None = None,
    db: IDatabase | None = None,
    csrf: bool = False,
    service: str = "test",
) -> Deferred[RenderedResponse]:
    """
    Send one HTTP/1.1 request to C{resource}, the root of a fresh L{Site}.

    @param method: the request method, e.g. C{"POST"}.
    @param path: the request target, relative to C{resource}; a C{str} is
        percent-encoded as UTF-8, C{bytes} are sent as they are.
    @param query: added to the path's query string; a value may be a list.
    @param headers: request headers; a value may be a list. C{Host} defaults
        to C{localhost}; C{Content-Length} is added for a body (and for
        POST, PUT and PATCH) unless given.
    @param body: the request body.
    @param client: the client's address, as C{request.getClientAddress()}
        returns it (an L{IPv6Address} if the host contains C{:}).
    @param reactor: the clock for the server's own timers (the channel's idle
        timeout); defaults to the global reactor. It does not drive the
        resource: give the resource its own clock for that.
    @param templates: what C{render_template} renders: a directory of
        templates (read for this request, with the publisher's rules), or a
        mapping from template name to source text. Error pages come from
        their C{errors/<status>.html}, else okws's defaults. Any other
        L{ITemplates} provider is used as it is. Without it,
        C{render_template} fails (a 500) and error pages are the built-in
        ones.
    @param db: what C{self.db} calls: an L{InMemoryDatabase} (or any
        L{IDatabase}). Without it, every C{self.db} call fails with
        L{QueryRefused}.
    @param csrf: send a valid CSRF cookie and C{X-CSRF-Token} header (made
        with L{csrf}), as a form rendered by the service would.
    @param service: the service name the CSRF secret is for (cookie names
        and tokens depend on it).

    @return: a L{Deferred} that fires with the L{RenderedResponse} once the
        response is complete, however late the resource finishes it. It fails
        with L{ResponseNeverReceived} if the server closes the connection
        before a whole response head, or L{ResponseFailed} if it closes in
        the middle of the body. Cancelling it closes the connection from the
        client's side, as a browser does when its user gives up: the
        resource sees the disconnect.

    @raise ValueError: if the method, path or a header could not be sent as
        they are (spaces, CR or LF, not a token), so that a test cannot
        smuggle a second request by accident.
    """
    rawMethod = _asBytes(method)
    if not _TOKEN.fullmatch(rawMethod):
        raise ValueError(f"not an HTTP method: {method!r}")
    target = _target(path, query)
    given = dict(headers or {})
    if csrf:
        cookie, token = _csrfPair(service, False)
        for name in list(given):
            if _asBytes(name).lower() == b"cookie":
                old = given.pop(name)
                olds = [old] if isinstance(old, (str, bytes)) else list(old)
                cookie = "; ".join([*(v.decode("latin-1") if isinstance(v, bytes) else v for v in olds), cookie])
        given["Cookie"] = cookie
        given["X-CSRF-Token"] = token
    allHeaders = _headerLines(given, body, rawMethod)
    request = b"".join(
        [rawMethod, b" ", target, b" HTTP/1.1\r\n", *allHeaders, b"\r\n", body]
    )

    host, port = client
    if ":" in host:
        peer: IAddress = IPv6Address("TCP", host, port)
        local: IAddress = IPv6Address("TCP", "::1", 80)
    else:
        peer = IPv4Address("TCP", host, port)
        local = IPv4Address("TCP", "127.0.0.1", 80)

    exchange = _Exchange(rawMethod)
    site = ServiceSite(resource, reactor=reactor)
    site.requestFactory = exchange.requestFactory  # type: ignore[assignment]
    site.request_ids = RequestIds("test")
    site.csrf = CsrfKey(service, TEST_CSRF_SECRET)
    if templates is not None:
        site.templates = (
            templates if ITemplates.providedBy(templates) else _LocalTemplates(templates)
        )
    site.db = db  # type: ignore[attr-defined]
    exchange.connect(site.buildProtocol(peer), local, peer)
    exchange.send(request)
    return exchange.result


def csrf(service: str = "test", secure: bool = False) -> tuple[str, str]:
    """A CSRF cookie (the C{Cookie} header's value) and its token, as L{render} checks them.

    @param secure: the C{__Host-} cookie of a TLS connection.
    """
    return _csrfPair(service, secure)


def _csrfPair(service: str, secure: bool) -> tuple[str, str]:
    nonce = new_nonce()
    token = CsrfKey(service, TEST_CSRF_SECRET).token(nonce)
    return (cookie_name(service, secure) + b"=" + nonce).decode("ascii"), token.decode("ascii")


@implementer(ITemplates)
class _LocalTemplates:
    """
    Templates for one in-memory request: a directory or a mapping, read
    synchronously, through the same renderer a service process uses.
    """

    log = Logger()

    def __init__(self, templates: _TemplateSources) -> None:
        loader: BaseLoader
        if isinstance(templates, Mapping):
            sources = dict(templates)
            for name, text in sources.items():
                try:
                    check_name(name)
                except NameRefused as e:
                    raise ValueError(f"templates: {name!r} is not a template name: {e}") from None
                if not isinstance(text, str):
                    raise TypeError(f"templates: {name!r} must be str, not {type(text).__name__}")
            self._read: Callable[[str], Source] = lambda name: _fromMapping(sources, name)
            loader = MappingLoader(sources)
        else:
            tree = TemplateTree(os.fspath(templates))
            if tree.real_root() is None:
                raise ValueError(f"templates: {os.fspath(templates)!r} is not a directory")
            self._read = tree.read
            loader = TreeLoader(tree)
        self._loader = loader
        self._pages: ErrorPages | None = None
        self._renderer = TemplateRenderer(TemplateCache(), self._fetch)

    def _fetch(self, name: str) -> Deferred[Source | Absent]:
        try:
            return succeed(self._read(name))
        except TemplateAbsent as e:
            return succeed(e.answer())

    def render(self, name: str, context: Mapping[str, Any]) -> Deferred[str]:
        return self._renderer.render(name, context)

    def error_page(self, status: int, message: str) -> str:
        if self._pages is None:
            pages, problems = render_error_pages(self._loader, default_error_templates())
            for problem in problems:
                self.log.error(
                    "error page template failed, using the default page: {where}: {message}",
                    where=problem.where,
                    message=problem.message,
                    template=problem.template,
                    lineno=problem.lineno,
                )
            self._pages = ErrorPages(pages)
        return self._pages.body(status, message)


def _fromMapping(sources: Mapping[str, str], name: str) -> Source:
    try:
        check_name(name)
    except NameRefused as e:
        raise TemplateAbsent(name, str(e), refused=True) from None
    if name not in sources:
        raise TemplateAbsent(name, "no such template")
    text = sources[name]
    return Source(name, text, etag_of(text.encode("utf-8")))


class _Exchange:
    """
    One request and its response over an in-memory connection.

    The response is over when the server finishes the request
    (C{notifyFinish}) or closes the connection, whichever comes first; then
    the connection is closed as a real client would (so the channel cancels
    its timers) and L{result} fires with what the server wrote.
    """

    def __init__(self, method: bytes) -> None:
        self._method = method
        self._over = False
        self.result: Deferred[RenderedResponse] = Deferred(self._clientGivesUp)

    def requestFactory(self, *args: Any, **kwargs: Any) -> ServiceRequest:
        """Build the site's L{ServiceRequest}, watching for its end.

        Like a served request it has a C{request_id} (always C{"test-1"} here:
        one request per site).
        """
        request = ServiceRequest(*args, **kwargs)
        request.notifyFinish().addBoth(self._requestOver)
        return request

    def connect(self, protocol: IProtocol, local: IAddress, peer: IAddress) -> None:
        """Connect the site's C{protocol} to an in-memory transport."""
        self._protocol = protocol
        self._transport = _ServerTransport(self._serverClosed, local, peer)
        protocol.makeConnection(self._transport)

    def send(self, data: bytes) -> None:
        """Deliver C{data} to the server as if it came from the client."""
        self._protocol.dataReceived(data)

    def _requestOver(self, outcome: object) -> None:
        # A failure here means the connection was lost, which _serverClosed or
        # _clientGivesUp has already dealt with; do not let it go unhandled.
        if not isinstance(outcome, Failure):
            self._conclude()

    def _serverClosed(self) -> None:
        self._conclude()

    def _conclude(self) -> None:
        if self._over:
            return
        self._over = True
        reason = Failure(ConnectionDone("the server closed the connection"))
        try:
            response = _parseResponse(self._transport.value(), self._method, reason)
        except Exception:
            outcome: object = Failure()
        else:
            outcome = response
        self._disconnect(ConnectionDone("the client closed the connection"))
        if isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def _clientGivesUp(self, result: Deferred[RenderedResponse]) -> None:
        """
        The test cancelled L{result}: close the connection as a client that
        gives up would. L{Deferred.cancel} then fails L{result} with
        L{CancelledError}.
        """
        if not self._over:
            self._over = True
            self._disconnect(ConnectionDone("the client closed the connection"))

    def _disconnect(self, why: Exception) -> None:
        self._transport.disconnecting = True
        self._protocol.connectionLost(Failure(why))


class _ServerTransport(StringTransport):
    """
    The service's end of the in-memory connection: it keeps what the server
    writes and reports the server closing it.
    """

    def __init__(
        self,
        onServerClose: Callable[[], None],
        hostAddress: IAddress,
        peerAddress: IAddress,
    ) -> None:
        super().__init__(hostAddress=hostAddress, peerAddress=peerAddress)
        self._onServerClose = onServerClose

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self._onServerClose()

    def unregisterProducer(self) -> None:
        # Real transports allow this twice (the channel does it on every
        # loseConnection); StringTransport would raise.
        if self.producer is not None:
            super().unregisterProducer()


class _Replay:
    """Just enough of a socket for C{http.client} to read recorded bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def _parseResponse(data: bytes, method: bytes, reason: Failure) -> RenderedResponse:
    """
    Read one complete response from C{data}, or raise the twisted.web client
    error for the way it is incomplete.
    """
    if b"\r\n\r\n" not in data:
        raise ResponseNeverReceived([reason])
    parsed = HTTPResponse(_Replay(data), method=method.decode("ascii"))  # type: ignore[arg-type]
    try:
        parsed.begin()
    except (HTTPException, ValueError):
        raise ResponseNeverReceived([reason, Failure()])
    try:
        body = parsed.read()
    except (HTTPException, ValueError):
        raise ResponseFailed([reason, Failure()])
    headers = Headers()
    for name, value in parsed.getheaders():
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    return RenderedResponse(code=parsed.status, headers=headers, body=body)


def _asBytes(value: _Text) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _target(path: _Text, query: Mapping[_Text, _HeaderValues] | None) -> bytes:
    """The request target: C{path} (percent-encoded if text) plus C{query}."""
    target = quote(path, safe=_PATH_SAFE).encode("ascii") if isinstance(path, str) else path
    if _BREAKS_LINE.search(target):
        raise ValueError(f"path would break the request line: {path!r}")
    if query:
        separator = b"&" if b"?" in target else b"?"
        target += separator + urlencode(query, doseq=True).encode("ascii")
    return target


def _headerLines(
    headers: Mapping[_Text, _HeaderValues], body: bytes, method: bytes
) -> list[bytes]:
    """The raw header lines, with the defaults a client would add."""
    lines: list[bytes] = []
    given: set[bytes] = set()
    for name, values in headers.items():
        rawName = _asBytes(name)
        if not _TOKEN.fullmatch(rawName):
            raise ValueError(f"not a header name: {name!r}")
        given.add(rawName.lower())
        if isinstance(values, (str, bytes)):
            values = [values]
        for value in values:
            rawValue = _asBytes(value)
            if re.search(rb"[\r\n\x00]", rawValue):
                raise ValueError(f"header {name!r} has a line break in {value!r}")
            lines.append(rawName + b": " + rawValue + b"\r\n")
    defaults = []
    if b"host" not in given:
        defaults.append(b"Host: localhost\r\n")
    framed = given & {b"content-length", b"transfer-encoding"}
    if not framed and (body or method in _BODY_METHODS):
        lines.append(b"Content-Length: %d\r\n" % (len(body),))
    return defaults + lines


@implementer(IDatabase)
class InMemoryDatabase:
    """
    A service's database for tests: SQLite in memory, from the site's own files.

    Built from the same queries file (and schema) a C{[db:NAME]} section
    names, granting the same queries a service's section grants, and run by
    the database proxy's own code: results have production's shapes and
    types, errors are the same classes (L{QueryRefused}, L{QueryFailed},
    ...), and a value the channel would not carry is the same C{TypeError}.
    Each call runs at once, in the calling thread, and its L{Deferred} has
    already fired, so C{successResultOf} works in a C{SynchronousTestCase}.

    @ivar connection: the C{sqlite3} connection, for the test's own checks
        and set-up (C{db.connection.execute(...)}).

    Like the proxy, it registers sqlite3 adapters and converters for
    C{Decimal}, C{date} and C{datetime} (and the declared types C{BOOLEAN},
    C{DATE}, C{TIMESTAMP}, C{TIMESTAMPTZ}, C{DECIMAL}); sqlite3 keeps these
    per process, so they apply to the test process's other sqlite3
    connections too.
    """

    def __init__(
        self,
        queries: str | os.PathLike[str],
        schema: str | os.PathLike[str] | None = None,
        grants: Sequence[str] | None = None,
        *,
        name: str = "main",
        max_result_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        """
        @param queries: the queries file (aiosql's format), as in C{[db:NAME] queries}.
        @param schema: the schema file, run once, as in C{[db:NAME] schema}.
        @param grants: the queries the service may run, as in C{[service:NAME]
            queries}; all of the file's (but scripts) by default.
        @raise sqlqueries.QueriesError: for a file aiosql refuses.
        @raise ValueError: for a grant that is not a query of the file.
        """
        _text, self.queries = sqlqueries.load(os.fspath(queries))
        self.name = name
        self.max_result_bytes = max_result_bytes
        self.connection = engine.sqlite_connect(":memory:", 5.0)
        if schema is not None:
            with open(os.fspath(schema), encoding="utf-8") as f:
                self.connection.executescript(f.read())
            self.connection.commit()
        names = [n for n, q in self.queries.items() if not q.script] if grants is None else list(grants)
        for granted in names:
            query = self.queries.get(granted)
            if query is None or query.script:
                raise ValueError(f"grants: {granted!r} is not a query of {os.fspath(queries)} (or is a script)")
        self.grants = {n: Grant(self.queries[n].suffix, self.queries[n].params) for n in names}
        self._running = engine.Running()
        self._keys = iter(range(1, 2**62))

    @classmethod
    def for_service(cls, site_ini: str | os.PathLike[str], service: str) -> "InMemoryDatabase":
        """The database C{service} of the site C{site_ini} uses (its files and its grants), in memory.

        @raise ValueError: if the service has no C{db}.
        """
        from okws_twisted.config import load

        config = load(os.fspath(site_ini))
        section = next((s for s in config.services if s.name == service), None)
        if section is None or not section.db:
            raise ValueError(f"{os.fspath(site_ini)}: [service:{service}] has no db")
        database = config.database(section.db)
        assert database is not None
        return cls(database.queries, database.schema or None, section.queries, name=database.name,
                   max_result_bytes=database.max_result_bytes)

    def call(self, query: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Deferred[Any]:
        grant = self.grants.get(query)
        if grant is None:
            return fail(QueryRefused("not a query this service was granted (its queries key in site.ini)", query,
                                     self.name))
        wire = check_call(grant, query, args, kwargs)
        # Through the wire's encoding, as production's parameters go.
        sent = dbvalues.loads(dbvalues.dumps(wire))
        params = [dbvalues.decode_params(p) for p in sent] if grant.suffix == "*!" else dbvalues.decode_params(sent)
        named = self.queries[query]
        status, value = engine.execute(engine.OneConnection(self.connection), named, named.sql, params, self._running,
                                       next(self._keys), self.max_result_bytes, 0.0)
        if status != OK:
            return fail(ERROR_CLASSES[status](str(value), query, self.name))
        return succeed(decode_result(grant.suffix, dbvalues.loads(value)))  # type: ignore[arg-type]
