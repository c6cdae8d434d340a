# -*- test-case-name: tests.wire.test_stamp -*-
"""
The C{Date} and C{Server} fields of every response okws writes (OKWS's okd and libaok headers).

RFC 9110 6.6.1: an origin server with a clock MUST send C{Date} on 2xx, 3xx and 4xx responses
(SHOULD on 5xx).  The field changes once a second, so each process formats it once a second,
not per response: one L{ResponseStamp} per process (the dispatcher's, each service
instance's), shared by everything there that writes a response, from twisted.web's requests to
the error answers written as bytes.  C{Server} is one value for the whole site,
C{[okws] server_header} (C{okws-twisted} unless the operator says otherwise, or none).

Pure: the clock is a parameter (C{IReactorTime}); nothing of twisted.web is imported, so the
dispatcher can use it.
"""

from __future__ import annotations

import time
from typing import Any

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"", b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def http_date(seconds: float) -> bytes:
    """IMF-fixdate (RFC 9110 5.6.7), as C{Sun, 06 Nov 1994 08:49:37 GMT}."""
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec
    )


class ResponseStamp:
    """One process's C{Date} (formatted once per second of C{clock}) and C{Server} (or none).

    @ivar server: the C{Server} value, or L{None} to send none.
    """

    def __init__(self, clock: Any, server: str) -> None:
        self._clock = clock
        self.server: bytes | None = server.encode("ascii") if server else None
        self._second = -1
        self._date = b""
        self._fields = b""

    def date(self) -> bytes:
        """The current C{Date} value."""
        self._refresh()
        return self._date

    def fields(self) -> bytes:
        """C{Date: ...\\r\\nServer: ...\\r\\n}, ready to follow a status line."""
        self._refresh()
        return self._fields

    def _refresh(self) -> None:
        now = int(self._clock.seconds())
        if now != self._second:
            self._second = now
            self._date = http_date(now)
            server = b"Server: " + self.server + b"\r\n" if self.server else b""
            self._fields = b"Date: " + self._date + b"\r\n" + server
