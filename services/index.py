"""
The example site's front page: C{/}, linking the examples.

The site routes C{/} here, and with it every path no other service or static pool claims (the
dispatcher routes by longest prefix, and C{/} is the shortest).  Only C{/} itself is the index;
any other path answers 404 with the site's own error page (C{errors/404.html}), on the same
kept-alive connection.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource


class Index(ServiceResource):
    """The index page (C{GET /}); 404 below it."""

    isLeaf = True

    async def render_GET(self, request: IRequest) -> str:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return await self.render_template(
                "errors/404.html", status=404, phrase="Not Found", message="Nothing is served at this address."
            )
        return await self.render_template("index.html")
