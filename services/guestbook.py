"""
The guestbook service: visitors leave messages, kept in the site's database.

C{GET} shows a form and the latest messages; C{POST} with the form field
C{message} stores it, then shows the page again.  The service reaches its
data only through its database proxy: C{self.db.add_message(...)} and
C{self.db.recent_messages(...)} run the named queries of C{sql/guestbook.sql}
that site.ini grants it (C{[service:guestbook] queries}); it has no file, no
network and no SQL of its own.  The page comes from the template
C{guestbook.html}; a message is whatever a visitor typed, and the template is
autoescaped, so a C{<script>} in it is shown as text, never run.
"""

from __future__ import annotations

import datetime
import os

from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource

#: Messages shown on the page, newest first.
SHOWN = 20
#: Longest message kept, in characters (the rest is cut).
MAX_MESSAGE = 1000


class Guestbook(ServiceResource):
    """The form and the latest messages (C{GET}); store a message (C{POST})."""

    # One page for every path the site routes here (/guestbook, ...).
    isLeaf = True

    async def render_GET(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        return await self.page(written=None)

    async def render_POST(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        fields = request.args.get(b"message") or [b""]
        message = fields[0].decode("utf-8", "replace").strip()[:MAX_MESSAGE]
        if message:
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            await self.db.add_message(text=message, created=now)
        return await self.page(written=message or None)

    async def page(self, written: str | None) -> str:
        messages = await self.db.recent_messages(limit=SHOWN)
        return await self.render_template("guestbook.html", message=written, messages=messages)
