"""
Unit tests for the service runtime's access records (L{okws_twisted.service.runtime.ServiceSite.log});
the runtime's serving is exercised end to end in L{tests.test_e2e_core}.
"""

from __future__ import annotations

import io

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from okws_twisted.service.web import ServiceRequest, ServiceSite
from okws_twisted.wire.logsender import RecordSender, RequestIds


class AccessRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.site = ServiceSite(Resource(), reactor=self.reactor)
        self.site.records = RecordSender(self.reactor, 100)
        self.site.request_ids = RequestIds("p")
        channel = DummyChannel()
        channel.factory = self.site
        self.request = ServiceRequest(channel)
        self.request.method, self.request.uri, self.request.clientproto = b"GET", b"/x?\xc3\xa9", b"HTTP/1.1"
        self.request.requestHeaders.setRawHeaders(b"user-agent", [b"ua \xff"])

    def records(self) -> list[dict[str, object]]:
        return self.site.records.buffer.pending  # type: ignore[union-attr]

    def test_record(self) -> None:
        self.reactor.advance(0.25)
        self.request.code, self.request.sentLength = 200, 12
        self.site.log(self.request)
        self.assertEqual(
            self.records(),
            [{"kind": "access", "time": 1_000_000_000, "client": "192.168.1.1", "request": "GET /x?\u00c3\u00a9 HTTP/1.1",
              "status": 200, "bytes": 12, "request_id": "p-1", "response_time": 250_000, "user_agent": "ua \u00ff"}],
        )
        self.assertEqual(self.request.request_id, "p-1")

    def test_accessLogOff(self) -> None:
        """With no access log, only error statuses are sent (they go to error.log)."""
        self.site.access_records = False
        self.request.code = 200
        self.site.log(self.request)
        self.request.code = 404
        self.site.log(self.request)
        self.assertEqual([r["status"] for r in self.records()], [404])

    def test_noClient(self) -> None:
        """No log client (not wired yet, or okws_twisted.testing): nothing is recorded, and nothing is
        written twisted.web's way either (a service process writes no log of its own)."""
        earlier = self.site.records
        self.site.records = None
        self.site._logFile = io.StringIO()  # where twisted.web's Site.log would write
        self.request.code, self.request.sentLength = 500, 3
        with capturedLogs() as events:
            self.site.log(self.request)
        self.assertEqual(self.site._logFile.getvalue(), "")
        self.assertEqual(list(events), [])
        self.assertEqual(earlier.buffer.pending, [])  # type: ignore[union-attr]
