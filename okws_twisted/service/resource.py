# -*- test-case-name: tests.service.test_resource -*-
"""The service author's resource: what an okws service is.

A service is a L{ServiceResource} subclass. The service process serves it with
an ordinary C{twisted.web} L{Site}; everything here runs inside that one
process, so this module imports nothing from the launcher or the dispatcher.
Its templates come from the site serving it (L{ITemplates}): the template
publisher's in a service process, the test's under
L{okws_twisted.testing.render}; so does its database (C{self.db}, an
L{IDatabase}): the database proxy's client, or a test's in-memory database.
"""

from __future__ import annotations

import inspect
import re
from contextvars import ContextVar
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.reflect import prefixedMethodNames
from twisted.web.http import FORBIDDEN, INTERNAL_SERVER_ERROR, NO_BODY_CODES, NOT_ALLOWED
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from okws_twisted.interfaces import IDatabase, ITemplates, PublisherUnavailable, TemplateFailure, TemplateMissing
from okws_twisted.service.csrf import FIELD, HEADER, CsrfKey, cookie_name, new_nonce, valid_nonce
from okws_twisted.service.database import DatabaseError, DatabaseUnavailable, Queries
from okws_twisted.wire.errorpage import builtin_page

__all__ = ["ServiceResource"]

# Only upper-case names are HTTP methods. Helpers an author (or this class:
# render_template) names render_<lower-case> can never be reached by a
# client that sends a request line like "template / HTTP/1.1".
_METHOD_NAME = re.compile(r"[A-Z]+")

_STR_CONTENT_TYPE = b"text/html; charset=utf-8"

_FAILED = "The server could not answer this request."
_UNAVAILABLE = "A part of this page is not available right now; try again shortly."

# The templates of the site serving the request being rendered, for
# render_template (which takes no request).  It is set around each call of a
# render_<METHOD>, and a coroutine keeps the value it started with.
_serving: ContextVar[ITemplates | None] = ContextVar("okws_serving_templates", default=None)
# The same for the database of that site, for self.db.
_servingDatabase: ContextVar[IDatabase | None] = ContextVar("okws_serving_database", default=None)
# The request being rendered, for the csrf_token() that render_template gives templates.
_rendering: ContextVar[IRequest | None] = ContextVar("okws_rendering_request", default=None)

#: What a request refused for its CSRF token is told (with the site's 403 page).
_CSRF_REFUSED = "The form has expired or did not come from this site; reload the page and try again."
#: The methods checked by default: those that change state.
UNSAFE_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


class ServiceResource(Resource):
    """
    The base class of every okws service: a L{Resource} whose
    C{render_<METHOD>} methods may be plain or asynchronous.

    Example::

        from okws_twisted import ServiceResource

        class Hello(ServiceResource):
            isLeaf = True  # one page for every path routed to this service

            async def render_GET(self, request):
                name = request.args.get(b"name", [b"world"])[0].decode()
                return await self.render_template("hello.html", name=name)

    Contract for C{render_<METHOD>(request)}:

      - It may return C{bytes}; C{str} (sent as UTF-8, with
        C{Content-Type: text/html; charset=utf-8} unless the method set a
        Content-Type); a L{Deferred}; or be C{async def}. A Deferred or
        coroutine must in turn produce C{bytes} or C{str}. Returning
        C{NOT_DONE_YET} keeps twisted.web's meaning: the method writes and
        finishes the request itself.
      - Any exception, synchronous or asynchronous, and any other return
        value (C{None} included) give the client the site's 500 page and put
        the traceback in the log (event fields C{method} and C{path}; for a
        template error also C{template} and C{lineno}). No traceback or
        exception text ever reaches the wire.
      - If the client goes away before an asynchronous answer is ready, the
        Deferred (or coroutine) is cancelled and nothing is written.
      - A method the class has no C{render_<METHOD>} for gets
        C{405 Method Not Allowed} with an C{Allow} header (from the
        C{render_*} methods, or from C{allowedMethods} if the class sets it).
        C{HEAD} is answered by C{render_GET} without the body unless the
        class defines C{render_HEAD}.

    Data comes from the service's database proxy: C{self.db.NAME(**params)}
    runs the named query C{NAME} this service was granted (see L{db}).

    Children work as in twisted.web (C{putChild}, C{getChild}), with one
    addition: a trailing slash renders the resource it follows (C{/} the root,
    C{/a/} the child C{a}) unless a child was put at C{b""}, where plain
    twisted.web answers 404.

    Forms are protected against cross-site request forgery by default: a
    request whose method is in C{csrf_methods} (POST, PUT, PATCH, DELETE)
    reaches its C{render_<METHOD>} only if it carries this service's token
    (the form field C{csrf_token}, or the C{X-CSRF-Token} header) for the
    nonce in its CSRF cookie; otherwise it gets the site's 403 page. A form
    gets its token from L{csrf_token} (templates call C{csrf_token()}). A
    resource serving an API with its own authentication opts out with
    C{csrf_methods = frozenset()}, or for some methods only.
    """

    log: ClassVar[Logger] = Logger()

    #: The methods whose requests must carry a CSRF token (checked after 405, before the render).
    csrf_methods: ClassVar[frozenset[bytes]] = UNSAFE_METHODS

    # The templates of the site that last rendered this resource, for a
    # render_template called later from a plain Deferred callback (outside
    # the context the render ran in).
    _okwsTemplates: ITemplates | None = None
    # The same for the site's database.
    _okwsDatabase: IDatabase | None = None
    # What self.db answered last (one Queries per database, built once: see the db property).
    _okwsQueries: Queries | None = None

    @property
    def db(self) -> Queries:
        """
        The named queries this service may run: C{self.db.NAME(**params)}.

        C{NAME} is a query of the site's queries file (aiosql's format) that
        the service's C{queries} key grants; the call returns a L{Deferred}
        (await it) of its result, shaped by the query's suffix: no suffix, a
        list of dicts (column name -> value); C{^} one dict or None; C{$} one
        value; C{!} the number of rows affected; C{<!} the returned id or row;
        C{*!} takes one list of parameter dicts. Each call is one
        transaction. Values may be None, bool, int, float, str, bytes,
        Decimal, date and datetime; any other type, or a wrong parameter
        name, raises C{TypeError} before anything is sent.

        It fails with L{QueryRefused} (not granted), L{DatabaseUnavailable}
        (the proxy or the database away, the queue full, C{query_timeout}
        passed; uncaught: 503 with C{Retry-After}) or L{QueryFailed} (the
        database's own error; uncaught: 500). No SQL, credential or database
        file ever reaches the service.
        """
        database = _servingDatabase.get() or self._okwsDatabase
        queries = self._okwsQueries
        if queries is None or queries._database is not database:
            # Kept: a page calls self.db.NAME(...) per call, and its methods are kept in it.
            queries = self._okwsQueries = Queries(database)
        return queries

    def render_template(self, template: str, /, **context: Any) -> Deferred[str]:
        """
        Render the jinja2 template named C{template} with C{context}.

        Returns a L{Deferred} (await it, or return it from a
        C{render_<METHOD>}) that fires with the page as C{str}. Templates
        ending in C{.html}, C{.htm} or C{.xml} are autoescaped. In a service
        process they come from the template publisher, cached, and
        refreshed when they change on disk; under
        L{okws_twisted.testing.render}, from the C{templates} given there.

        It fails with L{TemplateFailure} when the template is missing,
        refused, broken or cannot be had; left unhandled, that answers the
        client with the site's 500 page (503 with C{Retry-After} when the
        publisher is unreachable) and logs the template's name and line.
        """
        templates = _serving.get() or self._okwsTemplates
        if templates is None:
            return fail(
                TemplateMissing(
                    "no templates: this resource is not being served by okws"
                    " (in a test, pass templates= to okws_twisted.testing.render)",
                    template,
                )
            )
        if "csrf_token" not in context:
            context["csrf_token"] = self._tokenFor(_rendering.get())
        return templates.render(template, context)

    def csrf_token(self, request: IRequest) -> str:
        """This service's CSRF token for C{request}'s client, for a form's C{csrf_token} field.

        It sets the CSRF cookie (once per response) if the request did not
        carry a valid one. Templates rendered with L{render_template} call
        C{csrf_token()} instead: C{<input type="hidden" name="csrf_token"
        value="{{ csrf_token() }}">}.

        @raise LookupError: the resource is not served with a CSRF secret
            (neither by okws nor by L{okws_twisted.testing.render}).
        """
        key = _csrfKeyOf(request)
        if key is None:
            raise LookupError("no CSRF secret: this resource is not being served by okws")
        nonce = getattr(request, "okws_csrf_nonce", None)
        if nonce is None:
            secure = request.isSecure()
            name = cookie_name(key.service, secure)
            nonce = request.getCookie(name)
            if not valid_nonce(nonce):
                nonce = new_nonce()
                request.addCookie(name, nonce, path=b"/", secure=True if secure else None, httpOnly=True, sameSite="lax")
            request.okws_csrf_nonce = nonce
        return key.token(nonce).decode("ascii")

    def _tokenFor(self, request: IRequest | None) -> Any:
        """The C{csrf_token()} a template gets: bound to the request being rendered."""

        def csrf_token() -> str:
            if request is None:
                raise LookupError(
                    "csrf_token() has no request: render_template was called outside the render of one"
                    " (from a plain Deferred callback); pass csrf_token=self.csrf_token(request)"
                )
            return self.csrf_token(request)

        return csrf_token

    def _csrfRefusal(self, request: IRequest) -> str | None:
        """Why C{request} fails its CSRF check, or L{None} if it passes."""
        key = _csrfKeyOf(request)
        if key is None:
            return "no CSRF secret: this resource is not being served by okws (in a test, use okws_twisted.testing.render)"
        nonce = request.getCookie(cookie_name(key.service, request.isSecure()))
        sent = (request.args.get(FIELD) or [None])[0] or request.getHeader(HEADER)
        return key.check(nonce, sent)

    @staticmethod
    def tls(request: IRequest) -> dict[str, str] | None:
        """The TLS facts of the connection C{request} came on, or C{None} for plain HTTP.

        okws terminates TLS in its TLS front; a service sees the decrypted
        connection, with C{request.isSecure()} true and these facts:
        C{sni} (the name the client asked for, "" if none), C{cipher}
        (C{TLS_AES_256_GCM_SHA384}), C{version} (C{TLSv1.3}) and C{alpn}
        (C{http/1.1}, or "" if the client offered none).
        """
        channel = getattr(request, "channel", None)
        facts = getattr(getattr(channel, "transport", None), "tls", None)
        return dict(facts) if isinstance(facts, dict) else None

    def getChildWithDefault(self, path: bytes, request: IRequest) -> Any:
        """
        Find the child for C{path}, rendering this resource itself for a
        trailing slash so a service answers the same with and without one.
        """
        if path == b"" and not request.postpath and path not in self.children:
            return self
        return super().getChildWithDefault(path, request)

    def render(self, request: IRequest) -> Any:
        """
        Call the C{render_<METHOD>} for C{request.method} and send what it
        produces, now or when it is ready. Authors override C{render_<METHOD>},
        not this.
        """
        site = getattr(request, "site", None)
        templates = _templatesOfSite(site)
        if templates is not None:
            self._okwsTemplates = templates
        database = _databaseOfSite(site)
        if database is not None:
            self._okwsDatabase = database
        token = _serving.set(templates)
        dbToken = _servingDatabase.set(database)
        current = _rendering.set(request)
        try:
            return self._renderMethod(request)
        finally:
            _rendering.reset(current)
            _servingDatabase.reset(dbToken)
            _serving.reset(token)

    def _renderMethod(self, request: IRequest) -> Any:
        method = request.method
        handler = self._handlerFor(method)
        if handler is None:
            allowed = self._allowedMethods()
            request.setHeader(b"Allow", b", ".join(allowed))
            detail = "This resource allows " + ", ".join(m.decode() for m in allowed)
            # The site's 405 page, with Content-Length like every body okws
            # makes (twisted.web.pages would stream it chunked).
            self._errorPage(request, NOT_ALLOWED, detail, None)
            return NOT_DONE_YET
        if method in self.csrf_methods:
            why = self._csrfRefusal(request)
            if why is not None:
                self.log.info(
                    "refused {method} {path}: {why}",
                    method=_text(request.method),
                    path=_text(request.path),
                    why=why,
                )
                self._errorPage(request, FORBIDDEN, _CSRF_REFUSED, None)
                return NOT_DONE_YET
        try:
            result = handler(request)
        except Exception:
            self._fail(request, Failure())
            return NOT_DONE_YET
        if result is NOT_DONE_YET:
            return NOT_DONE_YET
        if type(result) is str or type(result) is bytes:
            self._respond(request, result)
            return NOT_DONE_YET
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            self._respondLater(request, result)
        else:
            self._respond(request, result)
        return NOT_DONE_YET

    def _handlerFor(self, method: bytes) -> Any:
        """
        The bound C{render_<METHOD>} for C{method}, or L{None} if this class
        does not answer it.
        """
        cls = type(self)
        names = _handlerNames.get(cls)
        if names is None:
            names = _handlerNames[cls] = {}
        name = names.get(method, _UNKNOWN)
        if name is _UNKNOWN:
            name = _handlerName(cls, method)
            if len(names) < _MAX_HANDLER_NAMES:
                names[method] = name
        return None if name is None else getattr(self, name, None)

    def _allowedMethods(self) -> list[bytes]:
        """
        The methods for the C{Allow} header: C{allowedMethods} if the class
        sets it (as in twisted.web), else the methods it has C{render_*} for.
        """
        explicit = getattr(self, "allowedMethods", None)
        if explicit is not None:
            return list(explicit)
        names = {
            name
            for name in prefixedMethodNames(type(self), "render_")
            if _METHOD_NAME.fullmatch(name)
        }
        if "GET" not in names and type(self).render_HEAD is Resource.render_HEAD:
            names.discard("HEAD")
        return sorted(name.encode("ascii") for name in names)

    def _respondLater(self, request: IRequest, pending: Deferred[Any]) -> None:
        """
        Send what C{pending} produces, or a 500 if it fails; cancel it if the
        client goes away first, and then never touch the request again.
        """
        clientGone = False

        def cancelOnDisconnect(reason: Failure) -> None:
            nonlocal clientGone
            clientGone = True
            self.log.info(
                "client went away before {method} {path} was answered",
                method=_text(request.method),
                path=_text(request.path),
            )
            pending.cancel()

        # Registered first, so it also covers a Deferred that already fired.
        request.notifyFinish().addErrback(cancelOnDisconnect)

        def succeeded(result: object) -> None:
            if not clientGone:
                self._respond(request, result)

        def failed(reason: Failure) -> None:
            if clientGone and reason.check(CancelledError):
                return
            self._fail(request, reason, clientGone=clientGone)

        pending.addCallbacks(succeeded, failed)

    def _respond(self, request: IRequest, result: object) -> None:
        """
        Send C{result} as the whole body, or a 500 if it is neither C{bytes}
        nor C{str} (a programming error in the service).
        """
        if isinstance(result, str):
            if not request.responseHeaders.hasHeader(b"content-type"):
                request.setHeader(b"content-type", _STR_CONTENT_TYPE)
            result = result.encode("utf-8")
        if not isinstance(result, bytes):
            self._fail(
                request,
                Failure(
                    TypeError(
                        f"{type(self).__qualname__}.render_{_text(request.method)}"
                        f" produced {type(result).__name__}, not bytes or str"
                        " (a bug in the service)"
                    )
                ),
            )
            return
        if request.finished:
            # render_METHOD finished the request itself and returned a body
            # too: the body is lost, say so instead of raising.
            self.log.error(
                "render {method} {path} returned a body after finishing the request",
                method=_text(request.method),
                path=_text(request.path),
            )
            return
        if request.code not in NO_BODY_CODES:
            request.setHeader(b"content-length", b"%d" % (len(result),))
        request.write(result)
        request.finish()

    def _fail(
        self, request: IRequest, reason: Failure, clientGone: bool = False
    ) -> None:
        """
        Log C{reason} with its traceback and answer the site's 500 page (503
        if a template could not be had) if the response has not started; if
        it has, cut the connection so the client sees a truncated response
        rather than a complete-looking one.
        """
        problem = reason.value
        status, message, retryAfter = INTERNAL_SERVER_ERROR, _FAILED, None
        if isinstance(problem, PublisherUnavailable):
            status, message, retryAfter = problem.status, _UNAVAILABLE, problem.retry_after
            self.log.warn(
                "template {template} unavailable for {method} {path}: {message}",
                template=problem.template,
                message=problem.message,
                method=_text(request.method),
                path=_text(request.path),
                request_id=_requestId(request),
            )
        elif isinstance(problem, DatabaseError):
            if isinstance(problem, DatabaseUnavailable):
                status, message, retryAfter = 503, _UNAVAILABLE, problem.retry_after
            self.log.failure(
                "database call {query} on [db:{db}] failed ({kind}) for {method} {path}: {message}",
                failure=reason,
                level=LogLevel.warn if isinstance(problem, DatabaseUnavailable) else LogLevel.error,
                query=problem.query,
                db=problem.db,
                kind=type(problem).__name__,
                message=problem.message,
                method=_text(request.method),
                path=_text(request.path),
            )
        elif isinstance(problem, TemplateFailure):
            self.log.failure(
                "template error in {where} ({method} {path}): {message}",
                failure=problem.cause or reason,
                level=LogLevel.error,
                where=problem.where,
                template=problem.template,
                lineno=problem.lineno,
                message=problem.message,
                method=_text(request.method),
                path=_text(request.path),
                request_id=_requestId(request),
            )
        else:
            self.log.failure(
                "render {method} {path} failed",
                failure=reason,
                method=_text(request.method),
                path=_text(request.path),
                request_id=_requestId(request),
            )
        if clientGone or request.finished:
            return
        if request.startedWriting:
            request.loseConnection()
            return
        _discardResponse(request)
        self._errorPage(request, status, message, retryAfter)

    def _errorPage(
        self, request: IRequest, status: int, message: str, retryAfter: int | None
    ) -> None:
        """Answer C{status} with the site's page for it (the built-in one if none)."""
        templates = _templatesOf(request)
        if templates is not None:
            body = templates.error_page(status, message)
        else:
            body = builtin_page(status, message)
        request.setResponseCode(status)
        request.setHeader(b"content-type", _STR_CONTENT_TYPE)
        if retryAfter is not None:
            request.setHeader(b"retry-after", b"%d" % (retryAfter,))
        self._respond(request, body)


#: Per class: a request method -> the name of its render method (None: none answers it).
_handlerNames: "WeakKeyDictionary[type, dict[bytes, str | None]]" = WeakKeyDictionary()
#: Methods remembered per class (a client names any it likes).
_MAX_HANDLER_NAMES = 64
_UNKNOWN = object()


def _handlerName(cls: type, method: bytes) -> str | None:
    """The name of C{cls}'s render method for C{method} (the class decides, not the instance)."""
    name = method.decode("ascii", "replace")
    if not _METHOD_NAME.fullmatch(name):
        return None
    if name == "HEAD" and cls.render_HEAD is Resource.render_HEAD:  # type: ignore[attr-defined]
        # twisted.web's default render_HEAD calls render_GET even when
        # there is none; go there directly so a GET-less class gives 405.
        name = "GET"
    return "render_" + name


def _databaseOfSite(site: Any) -> IDatabase | None:
    """The database of C{site}, if it has one."""
    db = getattr(site, "db", None)
    # (Adapting None costs an adapter-registry lookup on every request of a site without one.)
    return None if db is None else IDatabase(db, None)


def _csrfKeyOf(request: IRequest) -> CsrfKey | None:
    """The CSRF key of the site serving C{request}, if it has one."""
    key = getattr(getattr(request, "site", None), "csrf", None)
    return key if isinstance(key, CsrfKey) else None


def _templatesOf(request: IRequest) -> ITemplates | None:
    """The templates of the site serving C{request}, if it has any."""
    return _templatesOfSite(getattr(request, "site", None))


def _templatesOfSite(site: Any) -> ITemplates | None:
    """The templates of C{site}, if it has any."""
    templates = getattr(site, "templates", None)
    return None if templates is None else ITemplates(templates, None)


def _discardResponse(request: IRequest) -> None:
    """
    Forget the headers and cookies the failed render set (a Content-Encoding
    or Location would mislabel the error page), keeping only twisted.web's
    own C{Server} and C{Date}.
    """
    kept = Headers()
    for name in (b"server", b"date"):
        values = request.responseHeaders.getRawHeaders(name)
        if values:
            kept.setRawHeaders(name, values)
    request.responseHeaders = kept
    request.cookies = []
    request.etag = None
    request.lastModified = None


def _requestId(request: IRequest) -> str | None:
    """okws's id of C{request} (as in its access record), if it has one."""
    rid = getattr(request, "request_id", None)
    return rid if isinstance(rid, str) else None


def _text(raw: bytes) -> str:
    """Request bytes as log-safe text, whatever the client sent."""
    return raw.decode("ascii", "backslashreplace")
