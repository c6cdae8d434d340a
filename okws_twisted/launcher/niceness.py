# -*- test-case-name: tests.launcher.test_niceness -*-
"""
Setting a child's CPU priority from the launcher (the log daemon's ``[okws] logd_nice``).

Linux keeps a nice value per thread, and C{setpriority(PRIO_PROCESS, pid)} changes only the
thread whose id is C{pid}: L{renice} changes every thread of the process, as listed in
C{/proc/PID/task}.  Raising a nice value is allowed to anyone for their own processes; lowering
it again needs C{CAP_SYS_NICE} (L{may_lower}), which is why the launcher, not the child,
holds this power (see L{okws_twisted.logd.priority}).
"""

from __future__ import annotations

import os

#: The bit of C{CAP_SYS_NICE} in C{/proc/self/status}'s C{CapEff}.
CAP_SYS_NICE = 23


def may_lower(status_path: str = "/proc/self/status") -> bool:
    """Whether this process may lower a nice value (give a child normal priority back)."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def renice(pid: int, value: int) -> None:
    """Set every thread of process C{pid} to nice C{value} (C{OSError} if the process is gone)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        except ProcessLookupError:
            continue  # that thread ended meanwhile
