# -*- test-case-name: tests.test_resource -*-
"""The service author's resource: what an okws service is.

A service is a L{ServiceResource} subclass. The service process serves it with
an ordinary C{twisted.web} L{Site}; everything here runs inside that one
process, so this module imports nothing from the launcher, the dispatcher or
the wire protocols.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, ClassVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import prefixedMethodNames
from twisted.web import pages
from twisted.web.http import INTERNAL_SERVER_ERROR, NO_BODY_CODES, NOT_ALLOWED
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

__all__ = ["ServiceResource"]

# Only upper-case names are HTTP methods. Helpers an author (or this class,
# later: render_template) names render_<lower-case> can never be reached by a
# client that sends a request line like "template / HTTP/1.1".
_METHOD_NAME = re.compile(r"[A-Z]+")

_STR_CONTENT_TYPE = b"text/html; charset=utf-8"


class ServiceResource(Resource):
    """
    The base class of every okws service: a L{Resource} whose
    C{render_<METHOD>} methods may be plain or asynchronous.

    Example::

        import html
        from okws_twisted import ServiceResource

        class Hello(ServiceResource):
            isLeaf = True  # one page for every path routed to this service

            async def render_GET(self, request):
                name = request.args.get(b"name", [b"world"])[0].decode()
                return f"<p>Hello, {html.escape(name)}!</p>"

    Contract for C{render_<METHOD>(request)}:

      - It may return C{bytes}; C{str} (sent as UTF-8, with
        C{Content-Type: text/html; charset=utf-8} unless the method set a
        Content-Type); a L{Deferred}; or be C{async def}. A Deferred or
        coroutine must in turn produce C{bytes} or C{str}. Returning
        C{NOT_DONE_YET} keeps twisted.web's meaning: the method writes and
        finishes the request itself.
      - Any exception, synchronous or asynchronous, and any other return
        value (C{None} included) give the client a generic 500 page and put
        the traceback in the log (event fields C{method} and C{path}). No
        traceback or exception text ever reaches the wire.
      - If the client goes away before an asynchronous answer is ready, the
        Deferred (or coroutine) is cancelled and nothing is written.
      - A method the class has no C{render_<METHOD>} for gets
        C{405 Method Not Allowed} with an C{Allow} header (from the
        C{render_*} methods, or from C{allowedMethods} if the class sets it).
        C{HEAD} is answered by C{render_GET} without the body unless the
        class defines C{render_HEAD}.

    Children work as in twisted.web (C{putChild}, C{getChild}), with one
    addition: a trailing slash renders the resource it follows (C{/} the root,
    C{/a/} the child C{a}) unless a child was put at C{b""}, where plain
    twisted.web answers 404.
    """

    log: ClassVar[Logger] = Logger()

    # -- Templates -----------------------------------------------------------
    # render_template(name, **context) will live here: jinja2 templates fetched
    # from the template publisher (pubd), cached and refreshed. It arrives with
    # the template channel in a later issue and is deliberately not defined
    # yet, so that no service can come to depend on a stand-in.
    # -------------------------------------------------------------------------

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
        handler = self._handlerFor(request.method)
        if handler is None:
            allowed = self._allowedMethods()
            request.setHeader(b"Allow", b", ".join(allowed))
            detail = "This resource allows " + ", ".join(m.decode() for m in allowed)
            return pages.errorPage(NOT_ALLOWED, "Method Not Allowed", detail).render(
                request
            )
        try:
            result = handler(request)
        except Exception:
            self._fail(request, Failure())
        else:
            if result is NOT_DONE_YET:
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
        name = method.decode("ascii", "replace")
        if not _METHOD_NAME.fullmatch(name):
            return None
        if name == "HEAD" and type(self).render_HEAD is Resource.render_HEAD:
            # twisted.web's default render_HEAD calls render_GET even when
            # there is none; go there directly so a GET-less class gives 405.
            name = "GET"
        return getattr(self, "render_" + name, None)

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
        Log C{reason} with its traceback and answer a generic 500 if the
        response has not started; if it has, cut the connection so the client
        sees a truncated response rather than a complete-looking one.
        """
        self.log.failure(
            "render {method} {path} failed",
            failure=reason,
            method=_text(request.method),
            path=_text(request.path),
        )
        if clientGone or request.finished:
            return
        if request.startedWriting:
            request.loseConnection()
            return
        _discardResponse(request)
        pages.errorPage(
            INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "The server could not answer this request.",
        ).render(request)


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


def _text(raw: bytes) -> str:
    """Request bytes as log-safe text, whatever the client sent."""
    return raw.decode("ascii", "backslashreplace")
