"""
The form service: a form whose input is shown back, escaped.

C{GET} shows a form; C{POST} with the form field C{message} answers a page
showing that message. Both come from the template C{form.html}, which
extends the site's layout and imports the form from C{forms.html}. The
message is whatever a visitor typed; the template is autoescaped, so a
C{<script>} in it is shown as text, never run. The methods are C{async def},
the form a service takes when answering needs I/O (the guestbook, in
C{services/guestbook.py}, stores its messages).
"""

from __future__ import annotations

import os

from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource


class Form(ServiceResource):
    """A form (C{GET}) and the escaped message it posts (C{POST})."""

    # One page for every path the site routes here (/form, ...): the
    # service process mounts this resource at each of the service's paths.
    isLeaf = True

    async def render_GET(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        return await self.render_template("form.html", message=None)

    async def render_POST(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        messages = request.args.get(b"message") or [b""]
        message = messages[0].decode("utf-8", "replace")
        return await self.render_template("form.html", message=message)
