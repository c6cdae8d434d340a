# -*- test-case-name: tests.dispatcher.test_metrics -*-
"""
Counters and the Prometheus text format for the admin listener (no I/O).

Besides okws's own families (C{okws_...}), each process's memory, CPU time and open files
appear under the names of Prometheus's process collector, labelled by role, service and
instance (sampled by the launcher, L{okws_twisted.launcher.procstats}), and
C{okws_build_info} says which okws runs.

Service instances count their requests (by status) and time them into a
L{Histogram}; they send cumulative snapshots to the dispatcher, which adds its
own counters and the launcher's restart counts and renders them all with
L{render}.  Snapshots are cumulative, so a lost or late report loses nothing,
and an instance that exits leaves its last totals behind (L{ServiceTotals})
so counters never go down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from okws_twisted.wire.counts import BUCKETS, Histogram, RequestCounts


@dataclass
class ServiceTotals:
    """Per service and host pattern: totals left by instances that are gone, plus each live
    one's latest report."""

    gone: dict[str, RequestCounts] = field(default_factory=dict)
    live: dict[int, dict[str, RequestCounts]] = field(default_factory=dict)

    def report(self, pid: int, by_host: dict[str, RequestCounts]) -> None:
        self.live[pid] = by_host

    def instance_gone(self, pid: int) -> None:
        last = self.live.pop(pid, None)
        if last is not None:
            _add_into(self.gone, last)

    def total(self) -> dict[str, RequestCounts]:
        """Counts by host pattern."""
        out: dict[str, RequestCounts] = {}
        _add_into(out, self.gone)
        for by_host in self.live.values():
            _add_into(out, by_host)
        return out


@dataclass(frozen=True)
class ProcessMetrics:
    """One process's numbers, as the launcher sampled them (L{okws_twisted.launcher.procstats})."""

    role: str
    service: str
    instance: str
    rss: int
    cpu: float
    fds: int | None

    @property
    def labels(self) -> dict[str, str]:
        return {"role": self.role, "service": self.service, "instance": self.instance}


def process_samples(value: object) -> list[ProcessMetrics]:
    """The launcher's C{processes} list, keeping only well-formed entries (at most 4096)."""
    out = []
    for item in value[:4096] if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        labels = [item.get(k) for k in ("role", "service", "instance")]
        rss, cpu, fds = item.get("rss"), item.get("cpu"), item.get("fds")
        if not all(isinstance(l, str) and len(l) <= 64 for l in labels):
            continue
        if type(rss) is not int or not isinstance(cpu, (int, float)) or isinstance(cpu, bool):
            continue
        out.append(ProcessMetrics(*labels, rss, float(cpu), fds if type(fds) is int else None))  # type: ignore[arg-type]
    return out


def _add_into(total: dict[str, RequestCounts], more: dict[str, RequestCounts]) -> None:
    for host, counts in more.items():
        total.setdefault(host, RequestCounts()).add(counts)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="' + v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"' for k, v in labels.items()
    )
    return "{" + inner + "}"


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Builds one Prometheus text-format page, metric family by family."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._declared: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name not in self._declared:
            self._declared.add(name)
            self._lines.append(f"# HELP {name} {help_text}")
            self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._lines.append(f"{name}{_labels(labels or {})} {_number(value)}")

    def histogram(self, name: str, hist: Histogram, labels: dict[str, str]) -> None:
        running = 0
        for bound, count in zip(BUCKETS, hist.counts):
            running += count
            self.sample(f"{name}_bucket", running, {**labels, "le": _number(bound) if bound >= 1 else repr(bound)})
        self.sample(f"{name}_bucket", hist.count, {**labels, "le": "+Inf"})
        self.sample(f"{name}_sum", round(hist.total, 6), labels)
        self.sample(f"{name}_count", hist.count, labels)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render(
    services: Iterable[str],
    requests: dict[str, dict[str, RequestCounts]],
    gauges: dict[str, dict[str, float]],
    counters: dict[str, dict[str, float]],
    site: dict[str, float],
    info: dict[str, dict[str, str]] | None = None,
    processes: Iterable[ProcessMetrics] = (),
    build: dict[str, str] | None = None,
) -> str:
    """The Prometheus page.

    @param requests: per service and host pattern (a configured C{hosts} item, C{*} for
        services without hosts, C{-} for the dispatcher's answers to unrouted requests),
        requests by status and latency (services' own answers plus the dispatcher's answers
        for that service).  Durations are per service.
    @param gauges: per metric name (without the ``okws_`` prefix), a value per service.
    @param counters: likewise, for counters (names end in ``_total``).
    @param site: site-wide gauges and counters (name -> value).
    @param info: per service, its configured facts as labels (C{okws_service_info}, always 1).
    @param processes: each process's memory, CPU time and open files (labels role, service, instance).
    @param build: the labels of C{okws_build_info} (version, ...).
    """
    page = Exposition()
    names = sorted(services)
    if info:
        page.family("okws_service_info", "gauge", _HELP["service_info"])
        for service in sorted(info):
            page.sample("okws_service_info", 1, {"service": service, **info[service]})
    page.family("okws_requests_total", "counter", "Responses sent, by service, host pattern and status code.")
    for service in names:
        by_host = requests.get(service, {})
        for host in sorted(by_host):
            counts = by_host[host]
            for status in sorted(counts.by_status):
                page.sample(
                    "okws_requests_total", counts.by_status[status], {"service": service, "host": host, "code": str(status)}
                )
    page.family("okws_request_duration_seconds", "histogram", "Time from a complete request to its response's last byte, in the service.")
    for service in names:
        latency = Histogram()
        for counts in requests.get(service, {}).values():
            latency.add(counts.latency)
        page.histogram("okws_request_duration_seconds", latency, {"service": service})
    for metric, per_service in sorted(gauges.items()):
        page.family(f"okws_{metric}", "gauge", _HELP.get(metric, metric.replace("_", " ")))
        for service in names:
            page.sample(f"okws_{metric}", per_service.get(service, 0), {"service": service})
    for metric, per_service in sorted(counters.items()):
        page.family(f"okws_{metric}", "counter", _HELP.get(metric, metric.replace("_", " ")))
        for service in names:
            page.sample(f"okws_{metric}", per_service.get(service, 0), {"service": service})
    for metric, value in sorted(site.items()):
        kind = "counter" if metric.endswith("_total") else "gauge"
        page.family(f"okws_{metric}", kind, _HELP.get(metric, metric.replace("_", " ")))
        page.sample(f"okws_{metric}", value)
    if build:
        page.family("okws_build_info", "gauge", "Always 1; the labels say which okws, Twisted and Python run.")
        page.sample("okws_build_info", 1, dict(build))
    # The names of Prometheus's own process collector, one series per okws process.
    page.family("process_resident_memory_bytes", "gauge", "Resident memory of each okws process, in bytes.")
    for proc in processes:
        page.sample("process_resident_memory_bytes", proc.rss, proc.labels)
    page.family("process_cpu_seconds_total", "counter", "User and system CPU time of each okws process, in seconds.")
    for proc in processes:
        page.sample("process_cpu_seconds_total", round(proc.cpu, 2), proc.labels)
    page.family("process_open_fds", "gauge", "Open file descriptors of each okws process.")
    for proc in processes:
        if proc.fds is not None:
            page.sample("process_open_fds", proc.fds, proc.labels)
    return page.text()


_HELP = {
    "service_info": "A service's configuration: isolation (connection or request) and hosts (its hosts items, * for every host).",
    "in_flight_requests": "Requests being answered now.",
    "connections": "Client connections held by the service's instances.",
    "queue_depth": "Connections waiting in the dispatcher for a ready instance.",
    "ready_instances": "Instances ready to take connections.",
    "failed": "1 if the service exhausted its crash budget and is not relaunched.",
    "restarts_total": "Relaunches of the service's instances (crashes and graceful relaunches).",
    "handoffs_total": "Connections handed to the service's instances.",
    "handoff_failures_total": "Connections that could not be handed to an instance.",
    "misbehaviour_total": "Messages refused from the service's instances (forged or repeated handbacks, "
    "descriptors where none belong, channels closed for breaking their limits).",
    "dispatcher_open_connections": "Connections the dispatcher holds (reading heads, queued, in transit, relayed).",
    "dispatcher_relayed_connections": "Client connections whose requests the dispatcher relays (isolation = request).",
    "dispatcher_accepting": "1 while the dispatcher accepts new connections.",
    "log_records_buffered": "Log records waiting in senders for the log daemon.",
    "log_records_dropped_total": "Log records senders dropped because their buffer was full.",
    "up": "1: the dispatcher answers.",
}
