"""
What one access record costs a service instance (issue 14's target: at most 3 us).

Times L{okws_twisted.service.web.ServiceSite.log} (the record's raw values queued by
L{okws_twisted.wire.logsender.RecordSender.access}) and the encoding of the batch they are sent
in (JSON text for every record of the batch, in one loop, when it is sealed), in this process,
best of 7 rounds.  A tight loop keeps every cache warm: on the request path (bench/log_cpu.py)
each record costs more.

    .venv/bin/python bench/access_record.py
"""

from __future__ import annotations

import time

from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from okws_twisted.service.web import ServiceRequest, ServiceSite
from okws_twisted.wire.logsender import RecordSender, RequestIds

ROUND = 20_000


def main() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    site = ServiceSite(Resource(), reactor=clock)
    site.records = RecordSender(clock, 10 * ROUND, count=10 * ROUND)
    site.request_ids = RequestIds("p")
    channel = DummyChannel()
    channel.factory = site
    request = ServiceRequest(channel)
    request.method, request.uri, request.clientproto = b"GET", b"/hello", b"HTTP/1.1"
    request.code, request.sentLength = 200, 12
    request.requestHeaders.addRawHeader(b"user-agent", b"wrk/4.1")
    buffer = site.records.buffer
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(ROUND):
            site.log(request)
        t1 = time.perf_counter()
        buffer.seal()
        t2 = time.perf_counter()
        buffer.ack(buffer.next_seq)
        rounds.append((t2 - t0, t1 - t0, t2 - t1))
    total, log, seal = (x / ROUND * 1e6 for x in min(rounds))
    print(f"access record: {total:.2f} us (ServiceSite.log + emit {log:.2f} us, batch encoding {seal:.2f} us), best of 7 x {ROUND}")

if __name__ == "__main__":
    main()
