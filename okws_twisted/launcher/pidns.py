# -*- test-case-name: tests.test_e2e_walls_launcher -*-
"""
A PID namespace per jailed child (okld had none: OKWS trusted a dead service's pipes to close).

The launcher makes each jailed child the init (pid 1) of a new PID namespace, so that the
child's death is its whole tree's death: when a namespace's init exits, the kernel kills every
other process in it, orphans included, and nothing a service forks can outlive it, hold its
pipes and channels, or keep it from being supervised.

The child is still the process Twisted spawned and watches (its host pid is the transport's),
so no waiter process sits in between.  ``unshare(CLONE_NEWPID)`` does not move the caller: it
sets the namespace the calling thread's *next* child is born into.  L{PidNamespaces.spawn}
does that, spawns, and then ``setns`` back to the launcher's own namespace (opened once at
start), which a second ``unshare`` needs.  A launcher that cannot get back must stop: every
later child would be born inside the last one's namespace.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

CLONE_NEWPID = 0x20000000


class PidNamespaceError(Exception):
    """A PID namespace could not be made, or the launcher could not return to its own."""


class PidNamespaces:
    """Spawns children as the inits of new PID namespaces (root only)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.broken: str | None = None

    def spawn(self, reactor: Any, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> Any:
        """C{reactor.spawnProcess(...)}, the child born as pid 1 of a new PID namespace.

        If the launcher cannot return to its own namespace afterwards, the child
        is spawned all the same and C{broken} says why: the caller must spawn
        nothing more.

        @raise PidNamespaceError: the namespace could not be made (nothing was spawned), or an
            earlier spawn left the launcher C{broken}.
        """
        if self.broken is not None:
            raise PidNamespaceError(self.broken)
        if self._libc.unshare(CLONE_NEWPID) != 0:
            raise PidNamespaceError(f"unshare(CLONE_NEWPID): {os.strerror(ctypes.get_errno())}")
        try:
            return reactor.spawnProcess(protocol, executable, args, **kwargs)
        finally:
            if self._libc.setns(self._own, CLONE_NEWPID) != 0:
                self.broken = f"setns back to the launcher's PID namespace: {os.strerror(ctypes.get_errno())}"

    def close(self) -> None:
        os.close(self._own)
