"""A service whose instance dies on request, for relaunch tests."""

import os

from okws_twisted import ServiceResource


class Crash(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"x-okws-pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        if request.args.get(b"die"):
            os._exit(3)
        return b"alive"


class Hang(ServiceResource):
    """Blocks its whole process on ?hang=1 (a stuck service for the watchdog)."""

    isLeaf = True

    def render_GET(self, request):
        import time

        request.setHeader(b"x-okws-pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        if request.args.get(b"hang"):
            time.sleep(3600)
        return b"responsive"


class CrashOnStart(ServiceResource):
    """Dies while starting, every time (exhausts the crash budget)."""

    def __init__(self) -> None:
        os._exit(4)
