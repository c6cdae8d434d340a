# -*- test-case-name: tests.launcher.test_procstats -*-
"""
Each process's memory, CPU time and open files, sampled by the launcher for the metrics (OKWS
had none; Prometheus's process collector exports the same three per process).

Only the launcher can read them: a jailed child has no C{/proc} and is not dumpable, so even its
own uid may not list its C{/proc/PID/fd}; the launcher (root, or the children's own uid when
not root) reads C{/proc/PID/stat}, C{statm} and C{fd} of every child each heartbeat and passes the
numbers to the dispatcher, which serves them.  The parsing is pure; L{sample} does the reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessSample:
    """One process, now: resident memory (bytes), CPU time used (seconds), open descriptors (or None)."""

    rss: int
    cpu: float
    fds: int | None

    def to_json(self, role: str, service: str, instance: str) -> dict[str, object]:
        return {"role": role, "service": service, "instance": instance, "rss": self.rss, "cpu": self.cpu, "fds": self.fds}


def cpu_seconds(stat: str, ticks: int = _CLOCK_TICKS) -> float:
    """User plus system time from C{/proc/PID/stat} (fields 14 and 15, after the command's parentheses)."""
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / ticks


def resident_bytes(statm: str, page_size: int = _PAGE_SIZE) -> int:
    """Resident set size from C{/proc/PID/statm} (its second field, in pages)."""
    return int(statm.split()[1]) * page_size


def sample(pid: int) -> ProcessSample | None:
    """Read process C{pid}'s numbers; L{None} if it is gone (or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            cpu = cpu_seconds(f.read())
        with open(f"/proc/{pid}/statm") as f:
            rss = resident_bytes(f.read())
    except (OSError, ValueError, IndexError):
        return None
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return ProcessSample(rss, cpu, fds)
