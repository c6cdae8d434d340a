# -*- test-case-name: tests.wire.test_errorpage -*-
"""
Complete HTTP error responses written by okws itself (OKWS's okd error pages).

The dispatcher answers 400/404/408/413/414/421/431/501/503/505 before any service
sees a request, and a service answers 400 when a later request on its
connection is malformed, 403 when a form's CSRF token is missing or wrong,
500 when its render fails and 503 when a template cannot be had; a static
pool answers 404 and 405.  All of them write these responses.

The page itself comes from the site's error templates
(C{templates/errors/<status>.html}), which the template publisher renders
and pushes to every process as L{ErrorPages}: each page carries
L{MESSAGE_MARKER} where the message goes, and the message is put in here,
HTML-escaped, per response.  A process that has no page for a status (the
publisher has not spoken yet, or never rendered that status) falls back to
the small built-in page.  This module never imports jinja2: the dispatcher
uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from http import HTTPStatus
from typing import Mapping

#: Where the message goes in a rendered error page.  It has no letters and
#: nothing HTML escaping changes, so it survives autoescaping and case
#: filters, and no real page contains it (NUL is not HTML text).
MESSAGE_MARKER = "\x00\x1e\x00"

#: The statuses the site's error templates cover.
STATUSES = (400, 403, 404, 405, 408, 413, 414, 421, 431, 500, 501, 503, 505)
STATUSES = (400, 403, 404, 405, 408, 413, 414, 431, 500, 501, 503, 505)

#: RFC 9110's reason phrases where Python's C{HTTPStatus} (and twisted.web) still
#: carry the older ones (C{413 Request Entity Too Large}, C{414 Request-URI Too Long}).
RFC9110_PHRASES = {
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    505: "HTTP Version Not Supported",
}

_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>{code} {phrase}</title></head>\n"
    "<body><h1>{code} {phrase}</h1><p>{message}</p></body></html>\n"
)


def phrase(status: int) -> str:
    """The RFC 9110 reason phrase for C{status} (``"Unknown"`` if none)."""
    if status in RFC9110_PHRASES:
        return RFC9110_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def builtin_page(status: int, message: str = "") -> str:
    """The built-in page for C{status}: what is shown when the site has none."""
    text = phrase(status)
    return _PAGE.format(code=status, phrase=text, message=escape(message or text))


@dataclass(frozen=True)
class ErrorPages:
    """The site's rendered error pages, by status, each with a message marker.

    An empty value (the default) means "no site pages": every page is the
    built-in one.
    """

    pages: Mapping[int, str] = field(default_factory=dict)

    def body(self, status: int, message: str = "") -> str:
        """The page for C{status} showing C{message} (escaped here)."""
        page = self.pages.get(status)
        if page is None:
            return builtin_page(status, message)
        return page.replace(MESSAGE_MARKER, escape(message or phrase(status)))


NO_PAGES = ErrorPages()


def error_response(
    status: int,
    message: str = "",
    *,
    pages: ErrorPages = NO_PAGES,
    retry_after: int | None = None,
    head_only: bool = False,
    extra_headers: tuple[tuple[str, str], ...] = (),
    fields: bytes = b"",
    close: bool = True,
) -> bytes:
    """The whole HTTP/1.1 response for an error C{status}.

    @param message: a short explanation shown on the page (escaped here).
    @param pages: the site's error pages; the built-in page where it has none.
    @param head_only: leave the body out (the request was HEAD).
    @param fields: the process's C{Date} and C{Server} lines
        (L{okws_twisted.wire.stamp.ResponseStamp.fields}), right after the status line.
    @param close: say C{Connection: close} (the caller closes); C{False} only where
        the connection's framing is intact and it stays open.
    """
    text = phrase(status)
    body = pages.body(status, message).encode("utf-8")
    headers = [
        "Content-Type: text/html; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    if close:
        headers.append("Connection: close")
    headers.append("Cache-Control: no-store")
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    headers.extend(f"{k}: {v}" for k, v in extra_headers)
    head = (
        f"HTTP/1.1 {status} {text}\r\n".encode("latin-1")
        + fields
        + ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    )
    return head if head_only else head + body
