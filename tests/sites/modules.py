"""A service that lists the modules its process has loaded (for the idle-memory tests)."""

import json
import os
import sys

from okws_twisted import ServiceResource


class Modules(ServiceResource):
    """C{GET}: the names in C{sys.modules} (a module blocked with C{None} is not loaded)."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"x-okws-pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)).encode()
