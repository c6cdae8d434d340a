"""Unit tests for counters and the Prometheus page (okws_twisted.dispatcher.metrics)."""

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.dispatcher.metrics import ServiceTotals, process_samples, render
from okws_twisted.wire.counts import BUCKETS, Histogram, RequestCounts, counts_by_host


class HistogramTests(SynchronousTestCase):
    def test_buckets(self) -> None:
        h = Histogram()
        for s in (0.001, 0.005, 0.2, 30):
            h.observe(s)
        self.assertEqual(h.count, 4)
        self.assertEqual(h.counts[0], 2)  # le 0.005 is inclusive
        self.assertEqual(h.counts[BUCKETS.index(0.25)], 1)
        self.assertEqual(h.counts[-1], 1)  # +Inf
        self.assertAlmostEqual(h.total, 30.206)

    def test_round_trip_and_garbage(self) -> None:
        h = Histogram()
        h.observe(0.3)
        self.assertEqual(Histogram.from_json(h.to_json()), h)
        self.assertEqual(Histogram.from_json({"counts": [1, 2]}).count, 0)
        self.assertEqual(Histogram.from_json("junk").count, 0)


class TotalsTests(SynchronousTestCase):
    def test_counters_survive_an_instance(self) -> None:
        totals = ServiceTotals()
        a = RequestCounts()
        a.record(200, 0.01)
        a.record(200, 0.02)
        totals.report(11, {"*": a})
        b = RequestCounts()
        b.record(500, 0.1)
        totals.report(12, {"*": b, "admin.example": a})
        totals.instance_gone(11)
        total = totals.total()
        self.assertEqual(total["*"].by_status, {200: 2, 500: 1})
        self.assertEqual(total["*"].latency.count, 3)
        self.assertEqual(total["admin.example"].by_status, {200: 2})

    def test_reports_are_cumulative(self) -> None:
        totals = ServiceTotals()
        for n in (1, 2, 3):
            c = RequestCounts(by_status={200: n})
            totals.report(5, {"*": c})
        self.assertEqual(totals.total()["*"].by_status, {200: 3})

    def test_from_json_ignores_malformed(self) -> None:
        c = RequestCounts.from_json({"status": {"200": 3, "x": 1, "404": -1}, "latency": None})
        self.assertEqual(c.by_status, {200: 3})

    def test_only_configured_hosts(self) -> None:
        """An instance cannot grow the metrics with host labels of its own choosing."""
        report = {"*.example.org": {"status": {"200": 1}}, "attacker-1": {"status": {"200": 1}}, "x": "junk"}
        by_host = counts_by_host(report, frozenset({"*.example.org", "x"}))
        self.assertEqual(sorted(by_host), ["*.example.org", "x"])
        self.assertEqual(by_host["x"].by_status, {})
        self.assertEqual(counts_by_host("junk", frozenset({"*"})), {})


class RenderTests(SynchronousTestCase):
    def test_page(self) -> None:
        counts = RequestCounts()
        counts.record(200, 0.02)
        counts.record(404, None)
        other = RequestCounts()
        other.record(200, 0.02)
        page = render(
            ["hello"],
            {"hello": {"*": counts, "admin.example": other}},
            {"queue_depth": {"hello": 2}},
            {"restarts_total": {"hello": 1}},
            {"up": 1, "handoff_failures_total": 0},
        )
        lines = page.splitlines()
        self.assertIn("# TYPE okws_requests_total counter", lines)
        self.assertIn('okws_requests_total{service="hello",host="*",code="200"} 1', lines)
        self.assertIn('okws_requests_total{service="hello",host="*",code="404"} 1', lines)
        self.assertIn('okws_requests_total{service="hello",host="admin.example",code="200"} 1', lines)
        # Durations per service, over its hosts.
        self.assertIn('okws_request_duration_seconds_bucket{service="hello",le="0.025"} 2', lines)
        self.assertIn('okws_request_duration_seconds_bucket{service="hello",le="+Inf"} 2', lines)
        self.assertIn('okws_request_duration_seconds_count{service="hello"} 2', lines)
        self.assertIn('okws_queue_depth{service="hello"} 2', lines)
        self.assertIn("# TYPE okws_restarts_total counter", lines)
        self.assertIn("# TYPE okws_handoff_failures_total counter", lines)
        self.assertIn("okws_up 1", lines)
        self.assertTrue(page.endswith("\n"))

    def test_service_info(self) -> None:
        page = render(["a"], {}, {}, {}, {}, {"a": {"isolation": "request", "hosts": "admin.example.com"}})
        self.assertIn('okws_service_info{service="a",isolation="request",hosts="admin.example.com"} 1', page.splitlines())

    def test_label_escaping(self) -> None:
        page = render(['we"ird\\'], {}, {}, {}, {})
        self.assertIn('service="we\\"ird\\\\"', page)

    def test_processes_and_build(self) -> None:
        processes = process_samples([
            {"role": "dispatcher", "service": "", "instance": "", "rss": 20_000_000, "cpu": 1.234, "fds": 12},
            {"role": "service", "service": "hello", "instance": "0", "rss": 30_000_000, "cpu": 0.5, "fds": None},
            {"role": "service", "service": "x" * 65, "instance": "0", "rss": 1, "cpu": 1, "fds": 1},
            {"role": "service", "service": "bad", "instance": "0", "rss": "1", "cpu": 1, "fds": 1},
            "garbage",
        ])
        self.assertEqual(len(processes), 2)
        page = render([], {}, {}, {}, {}, processes=processes, build={"version": "0.1.0"})
        lines = page.splitlines()
        self.assertIn('okws_build_info{version="0.1.0"} 1', lines)
        self.assertIn("# TYPE process_resident_memory_bytes gauge", lines)
        self.assertIn('process_resident_memory_bytes{role="dispatcher",service="",instance=""} 20000000', lines)
        self.assertIn('process_cpu_seconds_total{role="service",service="hello",instance="0"} 0.5', lines)
        self.assertIn("# TYPE process_cpu_seconds_total counter", lines)
        self.assertIn('process_open_fds{role="dispatcher",service="",instance=""} 12', lines)
        self.assertFalse([l for l in lines if l.startswith('process_open_fds{role="service"')], "an unknown count is left out")
