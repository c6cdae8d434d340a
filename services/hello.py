"""
The hello service: the smallest useful okws service.

C{GET /hello?name=Ada} answers a page saying "Hello, Ada!" (C{world} when no
name is given), rendered from the template C{hello.html}, which extends the
site's layout C{base.html}. The name is user input; the template is
autoescaped, so it is shown as text. The C{X-Okws-Pid} header names the
process that answered, which is how the multi-process tests see which
instance served a request: its pid as the host sees it, C{OKWS_PID} (in a
jail, an instance is pid 1 of its own PID namespace).
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from okws_twisted import ServiceResource


class Hello(ServiceResource):
    """Greets C{?name=} (default C{world}); returns the template's L{Deferred}."""

    # One page for every path the site routes here (/hello, /hi/, ...): the
    # service process mounts this resource at each of the service's paths.
    isLeaf = True

    def render_GET(self, request: IRequest) -> Deferred[str]:
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        names = request.args.get(b"name") or [b""]
        name = names[0].decode("utf-8", "replace") or "world"
        return self.render_template("hello.html", name=name)
