# -*- test-case-name: tests.static.test_resource -*-
"""
The resource a static pool serves: the files under one directory (nginx's static module,
twisted.web's C{static.File}; OKWS had none).

A C{[static:NAME]} section is a pool of the ordinary service runtime whose resource is this
one, loaded by name (L{okws_twisted.config.site.STATIC_RESOURCE}) as a site's resources are:
routing, handoff, keep-alive, handbacks, limits, relaunches and access records are the
services'.  Its jail shows the interpreter, the okws package and the root (read-only, at
C{/files}), no site code and no network.  This module imports nothing of the service runtime
and no jinja2: error pages come from the site serving it (L{ITemplates}).

What it answers: C{GET} and C{HEAD} (405 otherwise); the file the path names below the mount
point (C{/static/css/a.css} is C{ROOT/css/a.css}; a path mounted exactly, such as
C{/favicon.ico}, is C{ROOT/favicon.ico}); 404 for anything else (a directory, a dotfile, a way
out of the root, a FIFO or device); C{Content-Type} from the name, C{ETag}, C{Last-Modified},
C{Cache-Control}, 304 and 412 for conditional requests, one C{Range} (206, 416; several ranges
get the whole file), a precompressed C{.br} or C{.gz} sibling when C{Accept-Encoding} allows
it.  Each request opens the file again, so a file replaced on disk is served fresh.  Small
files go out with their head in one write; larger ones by C{sendfile} (L{send_body}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from okws_twisted.interfaces import ITemplates
from okws_twisted.static.beneath import Exhausted, open_beneath, open_root
from okws_twisted.static.body import send_body
from okws_twisted.static.files import (
    Part,
    Unsatisfiable,
    accepted_codings,
    byte_range,
    compressible,
    content_type,
    etag,
    http_date,
    precondition,
    relative_path,
)
from okws_twisted.wire.errorpage import builtin_page

__all__ = ["StaticFiles"]

_HTML = b"text/html; charset=utf-8"
#: Headers of a file's answer that an error page must not carry.
_FILE_HEADERS = (b"etag", b"last-modified", b"cache-control", b"vary", b"accept-ranges", b"content-encoding")


class StaticFiles(Resource):
    """The files under C{root}, by the path below the mount point.

    @param root: the directory served (C{/files} in the jail).
    @param max_age: C{Cache-Control: public, max-age=N}; 0 sends C{no-cache} (revalidate every
        time, with the validators making that a 304).
    @param send_timeout: a client that reads nothing of a file for this long loses its
        connection (okws passes C{keepalive_timeout}).
    """

    isLeaf = True
    log = Logger()
    allowedMethods = (b"GET", b"HEAD")
    #: Files (or ranges) up to this size are read and written with the head, in one send.
    SMALL_FILE = 64 * 1024

    def __init__(self, root: str, max_age: int = 3600, send_timeout: float = 60.0) -> None:
        super().__init__()
        self.root = root
        self.send_timeout = send_timeout
        self.dirfd = open_root(root)
        self.cache_control = b"public, max-age=%d" % (max_age,) if max_age else b"no-cache"

    def render(self, request: IRequest) -> Any:
        if request.method not in self.allowedMethods:
            request.setHeader(b"allow", b", ".join(self.allowedMethods))
            return self._error(request, 405, "Only GET and HEAD are answered here.")
        segments = list(request.postpath)
        if not segments and request.prepath:
            # A path mounted exactly (/favicon.ico) names the file of that name in the root.
            segments = [request.prepath[-1]]
        rel = relative_path(segments)
        try:
            opened = open_beneath(self.dirfd, rel) if rel is not None else None
        except Exhausted as e:
            self.log.warn("cannot open a file for {path}: {error}", path=request.path.decode("latin-1"), error=e)
            return self._error(request, 503, "The server is busy; try again shortly.")
        if opened is None:
            return self._error(request, 404, "Nothing is served at this address.")
        assert rel is not None
        fd, st = opened
        owned = [fd]
        try:
            ctype = content_type(rel)
            coding = b""
            vary = compressible(ctype)
            if vary:
                for name, suffix in accepted_codings(request.getHeader(b"accept-encoding")):
                    try:
                        sibling = open_beneath(self.dirfd, rel + suffix)
                    except Exhausted:
                        sibling = None
                    if sibling is not None:
                        owned.append(sibling[0])
                        fd, st = sibling
                        coding = name
                        break
            return self._answer(request, fd, st, ctype, coding, vary, owned)
        finally:
            for unused in owned:
                os.close(unused)

    def _answer(
        self, request: IRequest, fd: int, st: os.stat_result, ctype: bytes, coding: bytes, vary: bool, owned: list[int]
    ) -> Any:
        """Answer from the open file C{fd}; whatever stays in C{owned} is closed by the caller."""
        tag = etag(st.st_mtime_ns, st.st_size, coding)
        mtime = int(st.st_mtime)
        request.setHeader(b"etag", tag)
        request.setHeader(b"last-modified", http_date(mtime))
        request.setHeader(b"cache-control", self.cache_control)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if vary:
            request.setHeader(b"vary", b"Accept-Encoding")
        headers = {name.lower(): values[0] for name, values in request.requestHeaders.getAllRawHeaders()}
        status = precondition(request.method, headers, tag, mtime)
        if status == 304:
            request.setResponseCode(304)
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        if status is not None:
            return self._error(request, status, "The file does not match the request's conditions.")
        size = st.st_size
        request.setHeader(b"accept-ranges", b"bytes")
        wanted = byte_range(headers.get(b"range"), size, headers.get(b"if-range"), tag, mtime)
        if isinstance(wanted, Unsatisfiable):
            request.setHeader(b"content-range", b"bytes */%d" % (size,))
            return self._error(request, 416, "The requested range is not in the file.")
        request.setHeader(b"content-type", ctype)
        if coding:
            request.setHeader(b"content-encoding", coding)
        if isinstance(wanted, Part):
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (wanted.start, wanted.end, size))
            offset, count = wanted.start, wanted.length
        else:
            offset, count = 0, size
        request.setHeader(b"content-length", b"%d" % (count,))
        if request.method == b"HEAD" or count == 0:
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        if count <= self.SMALL_FILE:
            data = os.pread(fd, count, offset)
            if len(data) != count:
                return self._error(request, 503, "The file changed while it was read; try again.")
            request.write(data)
            request.finish()
            return NOT_DONE_YET
        # The file now belongs to the sender: the caller must not close it.
        owned.remove(fd)
        request.write(b"")  # the head, now; the body follows from the file
        self._send(request, fd, offset, count)
        return NOT_DONE_YET

    def _send(self, request: IRequest, fd: int, offset: int, count: int) -> None:
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def sent(_: int) -> None:
            os.close(fd)
            if not gone and not request.finished:
                request.finish()

        def failed(reason: Failure) -> None:
            os.close(fd)
            if gone or reason.check(ConnectionLost, ConnectionDone):
                return  # the client went away: nothing to say
            # The head promised a length: a short body must never look complete.
            self.log.warn("sending {path} failed after its head: {error}", path=request.path.decode("latin-1"),
                          error=reason.getErrorMessage())
            request.channel.transport.abortConnection()

        send_body(request, fd, offset, count, self.send_timeout).addCallbacks(sent, failed)

    def _error(self, request: IRequest, status: int, message: str) -> Any:
        """The site's page for C{status} (the built-in one if it has none), keeping the connection."""
        for name in _FILE_HEADERS:
            request.responseHeaders.removeHeader(name)
        templates = ITemplates(getattr(getattr(request, "site", None), "templates", None), None)
        page = templates.error_page(status, message) if templates is not None else builtin_page(status, message)
        body = page.encode("utf-8")
        request.setResponseCode(status)
        request.setHeader(b"content-type", _HTML)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()
        return NOT_DONE_YET
