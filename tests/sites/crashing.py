"""A service whose instance dies on request, for relaunch tests."""

import os

from okws_twisted import ServiceResource


class Crash(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"x-okws-pid", str(os.getpid()).encode())
        if request.args.get(b"die"):
            os._exit(3)
        return b"alive"
