# -*- test-case-name: tests.static.test_files -*-
"""
Opening a file beneath the static root, and nowhere else (nginx's C{disable_symlinks}).

The root is bound read-only into the static pool's jail, but "symlinks out lead nowhere" is
false even there: an absolute link resolves against the jail's own tree, which holds the
interpreter, the okws package and C{/dev/urandom}.  So every open is confined to the root by
the kernel: C{openat2} with C{RESOLVE_BENEATH} (Linux 5.6 and later; a link that stays beneath
the root is followed, any other path out fails with C{EXDEV}), or, where the kernel has no
C{openat2}, a walk of the components with C{O_NOFOLLOW} (which refuses every symlink).  Only a
regular file is served: a directory, a FIFO (opened non-blocking, so it cannot hang the
process), a device or a socket is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

__all__ = ["Exhausted", "open_beneath", "open_root"]

_SYS_OPENAT2 = 437  # the same number on x86_64 and on the generic table (aarch64)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08

#: Non-blocking: opening a FIFO must not wait for a writer.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

#: Out of descriptors or memory: the server is busy (503), the file is not missing.
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


class Exhausted(Exception):
    """The file could not be opened for want of descriptors or memory (answer 503, not 404)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
#: None: not tried yet; False: this kernel (or a filter) has no openat2.
_has_openat2: bool | None = None


_HOW = _OpenHow(OPEN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
_HOW_REF = ctypes.byref(_HOW)
_HOW_SIZE = ctypes.sizeof(_HOW)


def _openat2(dirfd: int, rel: bytes) -> int:
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, rel, _HOW_REF, _HOW_SIZE)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


def _walk_nofollow(dirfd: int, rel: bytes) -> int:
    """Without C{openat2}: one component at a time, no symlink followed at all."""
    parts = rel.split(b"/")
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = step
        return os.open(parts[-1], OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def open_root(path: str) -> int:
    """A descriptor of the root directory every file is opened beneath (C{O_PATH})."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_beneath(dirfd: int, rel: bytes) -> tuple[int, os.stat_result] | None:
    """Open C{rel} beneath the directory C{dirfd}: (fd, its stat) for a regular file, else L{None}.

    @raise Exhausted: out of descriptors or memory.
    """
    global _has_openat2
    try:
        if _has_openat2 is not False:
            try:
                fd = _openat2(dirfd, rel)
                _has_openat2 = True
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EPERM) or _has_openat2:
                    raise
                _has_openat2 = False
                fd = _walk_nofollow(dirfd, rel)
        else:
            fd = _walk_nofollow(dirfd, rel)
    except OSError as e:
        if e.errno in _EXHAUSTED:
            raise Exhausted(os.strerror(e.errno)) from None
        return None  # ENOENT, EXDEV (a way out), ELOOP, EACCES, ENOTDIR, ENXIO...
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
