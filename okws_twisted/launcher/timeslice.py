"""
The dispatcher's CPU time slice: short, so a woken dispatcher is not kept waiting (OKWS had
none: its okd ran with the kernel's defaults).

Every request passes through the dispatcher, twice for a service with C{isolation = request}
(the request in, the response out).  On a busy machine the dispatcher, woken by a client's
bytes, otherwise waits behind whatever runs on its core (a service instance, the load
generator, a batch job) for up to that task's whole time slice: about 1.4 ms on a 2-core
machine with Linux's defaults, which is the latency tail such a relayed request shows.
Linux 6.12 and later (the EEVDF scheduler's custom slices) let a task ask for a shorter slice
with C{sched_setattr}'s C{sched_runtime}: its CPU share is unchanged (that is its weight), but
it runs sooner after a wakeup, in shorter turns.  The launcher asks it for the dispatcher's
pid as it spawns it (C{[okws] dispatcher_slice_us}); the kernel shows it as C{se.slice} in
C{/proc/PID/sched}.  An older kernel ignores the request, or refuses it: the launcher then
logs that and goes on with the default.
"""

from __future__ import annotations

import ctypes
import os
import struct

__all__ = ["set_time_slice", "time_slice"]

#: x86_64's and aarch64's numbers of the sched_setattr system call.
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
#: struct sched_attr, its first version: size, policy, flags, nice, priority, runtime,
#: deadline, period.
_ATTR = struct.Struct("IIQiIQQQ")
_SCHED_OTHER = 0

_libc = None


def set_time_slice(pid: int, microseconds: int) -> None:
    """Ask the kernel for a time slice of C{microseconds} for C{pid}'s (only) thread, keeping
    it an ordinary task of nice 0; C{0} gives it the kernel's default back.  Threads it starts
    later inherit the slice.  Raises L{OSError} where the kernel or the machine cannot."""
    global _libc
    number = _SCHED_SETATTR.get(os.uname().machine)
    if number is None:
        raise OSError(f"sched_setattr's number on {os.uname().machine} is not known")
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, _SCHED_OTHER, 0, 0, 0, microseconds * 1000, 0, 0))
    if _libc.syscall(number, pid, attr, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def time_slice(pid: int) -> int | None:
    """C{pid}'s time slice in microseconds, as C{/proc/PID/sched} shows it (C{se.slice}); L{None}
    where the kernel does not show one (before EEVDF)."""
    with open(f"/proc/{pid}/sched") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name.strip() == "se.slice":
                return int(value) // 1000
    return None
