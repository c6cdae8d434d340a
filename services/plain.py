"""
The plain hello service: "Hello, NAME!" without templates.

The benchmark (bench/run.py) serves this resource both from okws and from a
plain twisted.web process, so both do exactly the same work per request.
Templates are optional for a service; this one builds its page itself.
"""

from __future__ import annotations

import html
import os

from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource


class Hello(ServiceResource):
    """Greets C{?name=} (default C{world}); synchronous, returns C{str}."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> str:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        names = request.args.get(b"name") or [b""]
        name = names[0].decode("utf-8", "replace") or "world"
        return (
            "<!DOCTYPE html>\n"
            "<html><head><title>Hello</title></head>"
            f"<body><p>Hello, {html.escape(name)}!</p></body></html>\n"
        )
