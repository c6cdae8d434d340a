# -*- test-case-name: tests.test_errorpage -*-
"""
Complete HTTP error responses written by okws itself (OKWS's okd error pages).

The dispatcher answers 400/404/408/413/414/431/503/505 before any service
sees a request, and a service answers 400 when a later request on its
connection is malformed.  Both write the same small, fixed responses built
here, always with ``Connection: close`` (the connection is closed after an
error).
"""

from __future__ import annotations

from http import HTTPStatus
from html import escape

_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>{code} {phrase}</title></head>\n"
    "<body><h1>{code} {phrase}</h1><p>{message}</p></body></html>\n"
)


def phrase(status: int) -> str:
    """The standard reason phrase for C{status} (``"Unknown"`` if none)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_response(
    status: int,
    message: str = "",
    *,
    retry_after: int | None = None,
    head_only: bool = False,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The whole HTTP/1.1 response for an error C{status}, closing the connection.

    @param message: a short explanation shown on the page (escaped here).
    @param head_only: leave the body out (the request was HEAD).
    """
    text = phrase(status)
    body = _PAGE.format(code=status, phrase=text, message=escape(message or text)).encode()
    headers = [
        f"HTTP/1.1 {status} {text}",
        "Content-Type: text/html; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
    ]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    headers.extend(f"{k}: {v}" for k, v in extra_headers)
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
