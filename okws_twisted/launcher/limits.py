# -*- test-case-name: tests.launcher.test_limits -*-
"""
What a service instance may use (okld set only a file descriptor limit), with no I/O.

Each instance gets C{memory_limit} bytes and C{max_processes} tasks (processes and threads).
The kernel enforces them best with cgroups: a memory cgroup counts everything the instance
makes resident, ``memfd`` request bodies included, and its OOM killer ends the instance (and,
through its PID namespace, everything it started); a pids cgroup counts per instance.  Where
the launcher cannot have a cgroup (L{okws_twisted.launcher.cgroups}), L{plan} falls back to
rlimits, which are weaker, and says so: C{RLIMIT_AS} bounds address space, not memory (the
instance gets C{MemoryError}, which every okws process treats as fatal), a ``memfd`` is not
counted in it, so C{RLIMIT_FSIZE} caps each file at the memory limit; C{RLIMIT_NPROC} counts
per uid, across every instance of the service, threads included, so it is set only for
services that may fork, at C{max_processes} per instance plus one instance's worth for a
successor starting during a graceful relaunch.
"""

from __future__ import annotations

from dataclasses import dataclass

from okws_twisted.config import ServiceConfig


@dataclass(frozen=True)
class ResourcePlan:
    """One instance's limits: cgroup values, and the rlimits its jail sets (0: none)."""

    memory: int = 0
    pids: int = 0
    address_space: int = 0
    file_size: int = 0
    processes: int = 0


def plan(service: ServiceConfig, memory_cgroup: bool, pids_cgroup: bool) -> ResourcePlan:
    """The limits of one instance of C{service}, given which cgroups the launcher could make."""
    memory = service.memory_limit
    if memory_cgroup:
        cg_memory, address_space, file_size = memory, 0, 0
    else:
        cg_memory, address_space, file_size = 0, memory, memory
    if pids_cgroup:
        pids, processes = service.max_processes, 0
    elif service.fork:
        pids, processes = 0, service.max_processes * (service.instances + 1)
    else:
        pids, processes = 0, 0
    return ResourcePlan(memory=cg_memory, pids=pids, address_space=address_space, file_size=file_size, processes=processes)
