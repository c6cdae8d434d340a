"""A service that reports what the service process sees of the request."""

import hashlib
import json
import os

from okws_twisted import ServiceResource


class Echo(ServiceResource):
    isLeaf = True
    # A test API, not a form: bodies are posted by tests, with no CSRF token.
    csrf_methods = frozenset()

    def render_GET(self, request):
        addr = request.getClientAddress()
        request.setHeader(b"x-okws-pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "client": [addr.host, addr.port],
                "path": request.path.decode("latin-1"),
                "prepath": [p.decode("latin-1") for p in request.prepath],
                "postpath": [p.decode("latin-1") for p in request.postpath],
                "secure": request.isSecure(),
                "tls": self.tls(request),
                "url": request.prePathURL().decode("latin-1"),
                "pid": int(os.environ.get("OKWS_PID", os.getpid())),
            }
        ).encode()

    def render_POST(self, request):
        """The body as the service process got it: its length and digest."""
        body = request.content.read()
        request.setHeader(b"x-okws-pid", str(os.getpid()).encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "pid": os.getpid()}).encode()
