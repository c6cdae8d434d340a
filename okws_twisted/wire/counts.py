# -*- test-case-name: tests.dispatcher.test_metrics -*-
"""
What a process answered, as it reports it: requests by status and a latency histogram.

Service instances count their requests per host pattern (the configured C{hosts} item that
routed them, or C{*}) and send cumulative snapshots to the dispatcher on the handoff channel (the
``stats`` message's C{counts}: pattern -> counts); the dispatcher adds its own and renders the metrics
(L{okws_twisted.dispatcher.metrics}).  Snapshots are cumulative, so a lost or late report loses
nothing.  A snapshot comes from a less privileged process: L{RequestCounts.from_json} reads
anything malformed as empty.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUCKETS", "Histogram", "RequestCounts", "counts_by_host"]

#: Prometheus's default buckets, in seconds.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Request durations: a count per bucket (not cumulative), their sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total}

    @classmethod
    def from_json(cls, value: Any) -> "Histogram":
        """A histogram from an instance's report; anything malformed reads as empty."""
        h = cls()
        if isinstance(value, dict):
            counts = value.get("counts")
            if isinstance(counts, list) and len(counts) == len(h.counts) and all(isinstance(c, int) and c >= 0 for c in counts):
                h.counts = list(counts)
                total = value.get("sum")
                h.total = float(total) if isinstance(total, (int, float)) else 0.0
        return h

    def add(self, other: "Histogram") -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total


@dataclass
class RequestCounts:
    """What one process answered: requests by status and their durations."""

    by_status: dict[int, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)

    def record(self, status: int, seconds: float | None) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if seconds is not None:
            self.latency.observe(seconds)

    def to_json(self) -> dict[str, Any]:
        return {"status": {str(k): v for k, v in self.by_status.items()}, "latency": self.latency.to_json()}

    @classmethod
    def from_json(cls, value: Any) -> "RequestCounts":
        out = cls()
        if isinstance(value, dict):
            status = value.get("status")
            if isinstance(status, dict):
                for k, v in status.items():
                    if isinstance(k, str) and k.isdigit() and isinstance(v, int) and v >= 0:
                        out.by_status[int(k)] = v
            out.latency = Histogram.from_json(value.get("latency"))
        return out

    def add(self, other: "RequestCounts") -> None:
        for k, v in other.by_status.items():
            self.by_status[k] = self.by_status.get(k, 0) + v
        self.latency.add(other.latency)


def counts_by_host(value: Any, patterns: frozenset[str] | set[str]) -> dict[str, RequestCounts]:
    """An instance's C{counts} by host pattern, keeping only C{patterns} (its service's own).

    The instance is not believed about which hosts it serves: any other key (an attacker's
    way to grow the metrics without bound) is dropped, anything malformed reads as empty.
    """
    if not isinstance(value, dict):
        return {}
    return {k: RequestCounts.from_json(v) for k, v in value.items() if k in patterns}
