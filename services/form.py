"""
The guestbook service: a form whose input is shown back, escaped.

C{GET} shows a form; C{POST} with the form field C{message} answers a page
showing that message. The message is whatever a visitor typed, so it goes
through C{html.escape} before it is put in the page: a C{<script>} in it is
shown as text, never run. The methods are C{async def}, the form a service
takes when answering needs I/O (storing the message, say).
"""

from __future__ import annotations

import html
import os

from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource

_FORM = (
    '<form method="post">'
    '<label>Message <input name="message" maxlength="500"></label> '
    '<button type="submit">Sign</button>'
    "</form>"
)


def _page(body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        "<html><head><title>Guestbook</title></head>"
        f"<body><h1>Guestbook</h1>{body}</body></html>\n"
    )


class Guestbook(ServiceResource):
    """A form (C{GET}) and the escaped message it posts (C{POST})."""

    # One page for every path the site routes here (/hello, /hi/, ...): the
    # service process mounts this resource at each of the service's paths.
    isLeaf = True

    async def render_GET(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", b"%d" % (os.getpid(),))
        return _page(_FORM)

    async def render_POST(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", b"%d" % (os.getpid(),))
        messages = request.args.get(b"message") or [b""]
        message = messages[0].decode("utf-8", "replace")
        return _page(f"<p>You wrote: {html.escape(message)}</p>" + _FORM)
