# -*- test-case-name: tests.pubd.test_watch -*-
"""
Noticing template changes on disk, for the template publisher (OKWS's pubd).

The publisher keeps a snapshot of the tree (each template name with its
file's signature: inode, size, modification and change times) and compares
a fresh one with it (L{diff}, pure) to learn which names appeared, changed
or disappeared.  What triggers a fresh snapshot:

  - inotify (Linux): a watch on every directory of the tree, and on the
    directory holding the root so that a root replaced wholesale (a deploy
    that swaps a symbolic link or renames a new tree into place) is seen.
    Any event schedules one rescan a moment later, so an editor's burst of
    writes costs one scan.  The events themselves are not parsed: the
    snapshot says what changed, which also covers overflowed event queues.
  - polling, every L{POLL_INTERVAL} seconds, where inotify cannot be had.

Twisted's C{twisted.internet.inotify} is not used: it closes its whole
inotify descriptor as soon as any watched directory is deleted (so removing
one subdirectory would end all watching) and its recursive watch follows
symbolic links without a bound.  The few libc calls needed are made here
with ctypes.

The scan follows symbolic links to directories only where they stay inside
the tree, visits each directory once, skips hidden names (never served) and
stops at L{MAX_FILES} names.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: Seconds between scans where inotify is unavailable.
POLL_INTERVAL = 1.0
#: Seconds from the first inotify event to the rescan it triggers.
SETTLE = 0.05
#: Most template names watched.
MAX_FILES = 20000

Signature = tuple[int, int, int, int, int]

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_ONLYDIR = 0x01000000
_TREE_MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
    | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
)
_PARENT_MASK = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_ONLYDIR


@dataclass
class Snapshot:
    """The template files under a root at one moment, and the directories holding them."""

    files: dict[str, Signature] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)
    truncated: bool = False


def diff(old: dict[str, Signature], new: dict[str, Signature]) -> list[str]:
    """The names that appeared, disappeared or changed between two snapshots."""
    changed = {name for name, sig in new.items() if old.get(name) != sig}
    changed.update(name for name in old if name not in new)
    return sorted(changed)


def _signature(info: os.stat_result) -> Signature:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def scan(root: str, max_files: int = MAX_FILES) -> Snapshot:
    """Snapshot the template files under C{root} (an empty one if it is not a directory)."""
    snap = Snapshot()
    try:
        real_root = os.path.realpath(root, strict=True)
        info = os.stat(real_root)
    except OSError:
        return snap
    if not stat.S_ISDIR(info.st_mode):
        return snap
    visited = {(info.st_dev, info.st_ino)}
    stack = [(real_root, "")]
    inside = real_root + os.sep
    while stack:
        directory, prefix = stack.pop()
        snap.directories.append(directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.path
            try:
                if entry.is_symlink():
                    path = os.path.realpath(path, strict=True)
                    if not path.startswith(inside):
                        continue  # refused when asked for; nothing to watch
                info = os.stat(path)
            except OSError:
                continue  # gone meanwhile, or a dangling link
            name = prefix + entry.name
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key not in visited:
                    visited.add(key)
                    stack.append((path, name + "/"))
            elif stat.S_ISREG(info.st_mode):
                if len(snap.files) >= max_files:
                    snap.truncated = True
                    return snap
                snap.files[name] = _signature(info)
    return snap


@implementer(IReadDescriptor)
class _Inotify:
    """An inotify descriptor that reports "something happened" and nothing more."""

    def __init__(self, reactor: Any, happened: Callable[[], None], lost: Callable[[Failure], None]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self._fd = fd
        self._reactor = reactor
        self._happened = happened
        self._lost = lost
        reactor.addReader(self)

    def add(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{path}: {os.strerror(e)}")
        return int(wd)

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self._fd, wd)  # EINVAL if the kernel already dropped it

    def doRead(self) -> object:
        while True:
            try:
                if not os.read(self._fd, 65536):
                    break
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                return error.ConnectionLost(f"inotify: {e}")
        self._happened()
        return None

    def close(self) -> None:
        if self._fd >= 0:
            self._reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def connectionLost(self, reason: Failure) -> None:
        if self._fd >= 0:
            self.close()
            self._lost(reason)

    def logPrefix(self) -> str:
        return "inotify"


class TemplateWatcher:
    """Calls C{changed(names)} when templates under C{root} appear, change or go.

    @param use_inotify: try inotify first (polling if it fails); C{False}
        polls from the start.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        root: str,
        changed: Callable[[list[str]], None],
        *,
        poll_interval: float = POLL_INTERVAL,
        use_inotify: bool = True,
    ) -> None:
        self._reactor = reactor
        self.root = root
        self._changed = changed
        self._poll_interval = poll_interval
        self._use_inotify = use_inotify
        self._files: dict[str, Signature] = {}
        self._inotify: _Inotify | None = None
        self._watches: dict[str, int] = {}
        self._poll: LoopingCall | None = None
        self._pending: Any = None
        self._warned_truncated = False
        self.mode = "stopped"

    def start(self) -> str:
        """Take the first snapshot and start watching; return C{"inotify"} or C{"polling"}."""
        snap = self._snapshot()
        self._files = snap.files
        if self._use_inotify:
            try:
                self._inotify = _Inotify(self._reactor, self._kick, self._inotify_lost)
                parent = os.path.dirname(os.path.abspath(self.root))
                self._inotify.add(parent, _PARENT_MASK)
                self._watch(snap.directories)
                self.mode = "inotify"
            except (OSError, AttributeError) as e:
                # AttributeError: no inotify_init1 in this libc (not Linux).
                self.log.info("inotify unavailable ({error}); polling templates every {interval}s",
                              error=e, interval=self._poll_interval)
                self._stop_inotify()
        if self._inotify is None:
            self._start_polling()
        return self.mode

    def _start_polling(self) -> None:
        self._poll = LoopingCall(self.rescan)
        self._poll.clock = self._reactor
        self._poll.start(self._poll_interval, now=False)
        self.mode = "polling"

    def _inotify_lost(self, reason: Failure) -> None:
        self._inotify = None
        self._watches.clear()
        self.log.warn("inotify stopped ({reason}); polling templates every {interval}s instead",
                      reason=reason.getErrorMessage(), interval=self._poll_interval)
        self._start_polling()

    def stop(self) -> None:
        self._stop_inotify()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        self.mode = "stopped"

    def _stop_inotify(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._watches.clear()

    def _watch(self, directories: list[str]) -> None:
        """Watch exactly C{directories}: add new ones, drop those no longer in the tree."""
        assert self._inotify is not None
        wanted = set(directories)
        for gone in [d for d in self._watches if d not in wanted]:
            self._inotify.remove(self._watches.pop(gone))
        for directory in directories:
            if directory not in self._watches:
                try:
                    self._watches[directory] = self._inotify.add(directory, _TREE_MASK)
                except FileNotFoundError:
                    pass  # removed since the scan; the event that says so triggers another
                except OSError as e:
                    if e.errno != errno.ENOTDIR:
                        raise

    def _kick(self) -> None:
        if self._pending is None or not self._pending.active():
            self._pending = self._reactor.callLater(SETTLE, self.rescan)

    def _snapshot(self) -> Snapshot:
        snap = scan(self.root)
        if snap.truncated and not self._warned_truncated:
            self._warned_truncated = True
            self.log.warn("more than {count} templates under {root}: the rest are not watched for changes",
                          count=MAX_FILES, root=self.root)
        return snap

    def rescan(self) -> list[str]:
        """Compare the tree with the last snapshot now; report and return what changed."""
        self._pending = None
        snap = self._snapshot()
        names = diff(self._files, snap.files)
        self._files = snap.files
        if self._inotify is not None:
            try:
                self._watch(snap.directories)
            except OSError as e:
                self.log.warn("cannot watch templates with inotify ({error}); polling every {interval}s instead",
                              error=e, interval=self._poll_interval)
                self._stop_inotify()
                self._start_polling()
        if names:
            self._changed(names)
        return names
