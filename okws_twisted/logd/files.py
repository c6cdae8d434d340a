# -*- test-case-name: tests.logd.test_daemon -*-
"""
The log daemon's files (OKWS's oklogd log files): append-only, reopened on request, rotated by size.

Only the log daemon opens files under ``log_dir``.  Each file is opened
C{O_APPEND} and written with C{write(2)} straight from the daemon's batch,
so what the daemon wrote is in the kernel before it acknowledges anything.

Rotation, two ways:

 - external (logrotate): the operator renames the file and sends SIGUSR1 to
   the launcher, which asks the daemon to L{reopen <LogFile.reopen>}; the
   daemon keeps writing to the renamed file until then, so nothing is lost;
 - by size (``log_max_size``, ``log_keep``): after a batch leaves a file at
   or above the limit, C{access.log} becomes C{access.log.1},
   C{access.log.1} becomes C{access.log.2}, ..., up to C{log_keep} kept
   files; the oldest is deleted.
"""

from __future__ import annotations

import os

from okws_twisted.logd.journal import write_all

FILE_MODE = 0o640


class LogFile:
    """One log file in the log directory."""

    def __init__(self, log_dir: str, name: str, max_size: int = 0, keep: int = 5) -> None:
        self.log_dir = log_dir
        self.name = name
        self.path = os.path.join(log_dir, name)
        self.max_size = max_size
        self.keep = keep
        self.fd = -1
        self.size = 0
        self.dev = 0
        self.ino = 0

    def open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        st = os.fstat(fd)
        if st.st_size == 0 and st.st_mode & 0o777 != FILE_MODE:
            # A file just made: the promised mode whatever the umask (0640, not 0600 under 077).
            os.fchmod(fd, FILE_MODE)
        self.close()
        self.fd, self.size, self.dev, self.ino = fd, st.st_size, st.st_dev, st.st_ino

    def append(self, data: bytes) -> None:
        write_all(self.fd, [data])
        self.size += len(data)

    def reopen(self) -> None:
        """Open the path again: after an external rename, a new file is started."""
        self.open()

    @property
    def full(self) -> bool:
        """Size rotation is on and the file has reached it."""
        return self.max_size > 0 and self.size >= self.max_size

    def rotate(self) -> None:
        """Shift C{NAME.N} to C{NAME.N+1} (dropping the one past C{keep}), C{NAME} to C{NAME.1}; start afresh."""
        try:
            os.unlink(f"{self.path}.{self.keep}")
        except FileNotFoundError:
            pass
        for n in range(self.keep - 1, 0, -1):
            try:
                os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            except FileNotFoundError:
                pass
        os.rename(self.path, f"{self.path}.1")
        self.open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
