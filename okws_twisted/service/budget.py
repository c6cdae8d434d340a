# -*- test-case-name: tests.service.test_budget -*-
"""
What a client may cost one service instance (OKWS's libaok had fixed fd limits): descriptors and time.

Descriptors: an instance has C{RLIMIT_NOFILE} of them.  L{FdBudget} splits
them once, at start: L{RESERVED_FDS} for the process itself (its channels,
the reactor, the interpreter), one per connection up to L{FdBudget.conn_cap},
and what is left for request bodies kept in anonymous memory files
(L{FdBudget.memfd_cap}; a body goes to memory once they are all in use, see
L{BodyFiles}).  Clients therefore never run the instance out of descriptors:
the runtime takes no connection past the cap (the dispatcher answers it
C{503}) and never opens a body file past its share.

Time: a request body must keep arriving (L{BodyDeadline}, shared with the
dispatcher's relay in L{okws_twisted.wire.bodytime}): at most
C{body_timeout} seconds between two reads, and on average at least
C{body_min_rate} bytes a second once C{body_timeout} has passed (Apache's
C{mod_reqtimeout} C{MinRate}).  A client that drips a body costs itself the
connection, not the service its capacity.

Pure logic but for L{FdBudget.for_process} (reads and raises the soft
limit) and L{BodyFiles.new} (creates the files).
"""

from __future__ import annotations

import errno
import io
import os
import resource
from dataclasses import dataclass
from typing import IO

#: Descriptors kept for the process itself: stdio, the control, handoff,
#: templates and log channels, the reactor's epoll and waker, the interpreter's
#: own, with a wide margin.
RESERVED_FDS = 64

#: Bodies shorter than this (twisted.web's threshold) always live in memory.
SMALL_BODY = 100_000


@dataclass(frozen=True)
class FdBudget:
    """How one instance spends its C{RLIMIT_NOFILE}."""

    nofile: int
    max_connections: int

    @property
    def conn_cap(self) -> int:
        """The most client connections the instance holds at once (handed-back ones
        waiting for the dispatcher's acknowledgement included)."""
        return max(0, min(self.max_connections, self.nofile - RESERVED_FDS))

    @property
    def memfd_cap(self) -> int:
        """The most request bodies kept in memory files at once: what the connections leave."""
        return max(0, self.nofile - RESERVED_FDS - self.conn_cap)

    @classmethod
    def for_process(cls, max_connections: int) -> "FdBudget":
        """This process's budget, after raising its soft limit as far as it needs (up to the hard one).

        Every connection may hold a body file, so it wants two descriptors
        per connection; a jailed service gets the hard limit the launcher set.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 2 * max_connections + RESERVED_FDS
        if soft < want and soft != resource.RLIM_INFINITY:
            raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
            if raised > soft:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                    soft = raised
                except (ValueError, OSError):
                    pass
        return cls(soft, max_connections)


class _BodyFile(io.FileIO):
    """An anonymous memory file holding one request body; counted while open."""

    def __init__(self, fd: int, files: "BodyFiles") -> None:
        super().__init__(fd, "r+")
        self._files: BodyFiles | None = files

    def close(self) -> None:
        files, self._files = self._files, None
        if files is not None:
            files.open -= 1
        super().close()


class BodyFiles:
    """Where request bodies go: memory files while the budget allows, else memory.

    A jailed service has no temporary directory, so twisted.web's own choice
    (a temporary file for a large body) cannot be used.  A memory file and a
    bytes buffer cost the same memory; the file costs a descriptor too, so
    only L{FdBudget.memfd_cap} of them are open at once.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0

    def new(self, length: int | None) -> IO[bytes]:
        """A file for a body of C{length} bytes (L{None}: chunked, size unknown)."""
        if length is not None and length < SMALL_BODY or self.open >= self.cap:
            return io.BytesIO()
        try:
            fd = os.memfd_create("okws-request-body", os.MFD_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                return io.BytesIO()
            raise
        self.open += 1
        return _BodyFile(fd, self)


