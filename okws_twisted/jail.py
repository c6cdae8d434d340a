# -*- test-case-name: tests.test_e2e_jail -*-
"""
Jails: what a child process may see and do (OKWS okld's chroot and uid juggling).

A child spawned by a root launcher starts as root, enters its jail here, and
only then imports and runs its role.  Entering a jail, in this order (any
other order fails with EPERM or leaves a way out):

1. ``unshare(CLONE_NEWNS)`` (plus ``CLONE_NEWNET`` for ``network = none``):
   a private mount namespace, so the mounts below exist for this process only;
   make every mount private so nothing propagates back to the host.
2. A fresh ``tmpfs`` at the jail directory (``jail_root/NAME``), owned by root
   and read-only once built, holding only: read-only bind mounts of the
   Python interpreter's prefix and of every directory the child must import
   from (the okws package, the service's own package), ``/dev/null`` and
   ``/dev/urandom``, and the role's own directories (the log
   directory for the log daemon, read-write; the templates for the
   publisher, read-only; a service's opt-in ``/scratch``).  No ``/proc``, no
   ``/tmp``, no ``/etc``, nothing else of the host (twisted.web's request
   bodies live in memory: see L{okws_twisted.service.runtime.ServiceRequest}).
   Python needs its modules after the jail closes; binding the interpreter
   read-only solves that without a list of modules to pre-import.
3. ``chroot`` into it and ``chdir("/")``.
4. ``setgroups([])``, ``setresgid``, ``setresuid`` to the child's own ids.
5. ``PR_SET_NO_NEW_PRIVS``, ``PR_SET_DUMPABLE = 0``, ``RLIMIT_CORE = 0``, a
   bounded ``RLIMIT_NOFILE``, and the capability bounding set emptied.
6. For ``network = none``: a seccomp filter refusing every new non-Unix
   socket and every ``connect``, ``bind`` and ``listen`` (the empty network
   namespace already leaves nothing to reach; this also stops a process from
   listening on its own unreachable ports).

Every call's result is checked; a failure aborts the child before it runs
any role code.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from dataclasses import dataclass, field
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAP_LAST_CAP_GUESS = 63


class JailError(Exception):
    """Entering the jail failed; the child must not go on."""


@dataclass(frozen=True)
class Bind:
    """A host path shown inside the jail (at C{target}, or at the same path)."""

    path: str
    writable: bool = False
    target: str | None = None

    def to_json(self) -> list[Any]:
        return [self.path, self.writable, self.target]


@dataclass(frozen=True)
class JailSpec:
    """Everything one child's jail needs; built by the launcher, applied by the child."""

    root: str
    uid: int
    gid: int
    binds: tuple[Bind, ...] = ()
    tmp_size: int = 0
    nofile: int = 4096
    new_net: bool = False
    devices: tuple[str, ...] = field(default=("/dev/null", "/dev/urandom"))

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "uid": self.uid,
            "gid": self.gid,
            "binds": [b.to_json() for b in self.binds],
            "tmp_size": self.tmp_size,
            "nofile": self.nofile,
            "new_net": self.new_net,
            "devices": list(self.devices),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "JailSpec":
        return cls(
            root=str(value["root"]),
            uid=int(value["uid"]),
            gid=int(value["gid"]),
            binds=tuple(Bind(str(p), bool(w), t) for p, w, t in value["binds"]),
            tmp_size=int(value["tmp_size"]),
            nofile=int(value["nofile"]),
            new_net=bool(value["new_net"]),
            devices=tuple(str(d) for d in value["devices"]),
        )


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = _c()
    result = libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    _check(result, f"mount {source} on {target}")


def make_dirs(path: str, mode: int = 0o755) -> None:
    """C{mkdir -p} where every directory it makes gets C{mode}, whatever the umask.

    C{os.makedirs(mode=)} gives intermediate directories C{0777 & ~umask} and
    masks the leaf too: under twistd's daemon umask (077) the jail's skeleton
    came out root-only, and the child, once unprivileged, could not reach its
    own bind mounts (its first import after the chroot failed).
    """
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass
        os.chmod(d, mode)


def _make_mount_point(jail: str, path: str, is_dir: bool) -> str:
    target = os.path.join(jail, path.lstrip("/"))
    make_dirs(os.path.dirname(target))
    if is_dir:
        make_dirs(target)
    elif not os.path.exists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        os.chmod(target, 0o644)
    return target


def enter(spec: JailSpec) -> None:
    """Enter the jail described by C{spec}; raise L{JailError} on any failure."""
    libc = _c()
    flags = CLONE_NEWNS | (CLONE_NEWNET if spec.new_net else 0)
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)

    make_dirs(spec.root)
    _mount("okws-jail", spec.root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,uid=0,gid=0")
    for bind in spec.binds:
        real = os.path.realpath(bind.path)
        if not os.path.exists(real):
            continue
        target = _make_mount_point(spec.root, bind.target or bind.path, os.path.isdir(real))
        _mount(real, target, None, MS_BIND | MS_REC)
        ro = 0 if bind.writable else MS_RDONLY
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | ro)
    for device in spec.devices:
        target = _make_mount_point(spec.root, device, False)
        _mount(device, target, None, MS_BIND)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC | MS_RDONLY)
    if spec.tmp_size:
        tmp = _make_mount_point(spec.root, "/tmp", True)
        _mount("okws-tmp", tmp, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={spec.tmp_size}")
    # The jail's own skeleton becomes read-only: nothing may add files to it.
    _mount(None, spec.root, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY)

    os.chroot(spec.root)
    os.chdir("/")

    drop_bounding_set()
    os.setgroups([])
    os.setresgid(spec.gid, spec.gid, spec.gid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    if os.getresuid() != (spec.uid,) * 3 or os.getresgid() != (spec.gid,) * 3 or os.getgroups():
        raise JailError("privileges were not dropped")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec.nofile, spec.nofile))
    if spec.new_net:
        deny_network_sockets()
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise JailError("could become root again")


# seccomp: for network = none, no new network sockets at all (defence in depth:
# the empty network namespace already leaves nothing to connect to, but it
# would still let a process bind and listen on its own unreachable ports).
_SECCOMP_MODE_FILTER = 2
_PR_SET_SECCOMP = 22
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: (socket, connect, bind, listen) system call numbers.
_NET_CALLS = {"x86_64": (41, 42, 49, 50), "aarch64": (198, 203, 200, 201)}
_AF_UNIX = 1


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def deny_network_sockets() -> None:
    """Install a seccomp filter: no non-Unix socket, no connect, bind or listen (EPERM).

    Sockets the process already holds, and those passed to it, keep working.
    """
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        raise JailError(f"network = none needs a seccomp filter for {machine}, which okws does not have")
    nr_socket, nr_connect, nr_bind, nr_listen = _NET_CALLS[machine]
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    deny = _RET_ERRNO | errno.EPERM
    prog = [
        (ld_w_abs, 0, 0, 4),                                  # 0: arch
        (jeq_k, 1, 0, _AUDIT_ARCH[machine]),                  # 1: our arch? skip the kill
        (ret_k, 0, 0, 0),                                     # 2: another ABI: kill
        (ld_w_abs, 0, 0, 0),                                  # 3: syscall number
        (jge_k, 0, 1, 0x40000000),                            # 4: x32 ABI numbers: kill
        (ret_k, 0, 0, 0),                                     # 5
        (jeq_k, 4, 0, nr_connect),                            # 6 -> 11 deny
        (jeq_k, 3, 0, nr_bind),                               # 7 -> 11
        (jeq_k, 2, 0, nr_listen),                             # 8 -> 11
        (jeq_k, 3, 0, nr_socket),                             # 9 -> 13
        (ret_k, 0, 0, _RET_ALLOW),                            # 10
        (ret_k, 0, 0, deny),                                  # 11
        (ret_k, 0, 0, _RET_ALLOW),                            # 12 (unused)
        (ld_w_abs, 0, 0, 16),                                 # 13: socket's family (args[0], low word)
        (jeq_k, 0, 1, _AF_UNIX),                              # 14
        (ret_k, 0, 0, _RET_ALLOW),                            # 15
        (ret_k, 0, 0, deny),                                  # 16
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    libc = _c()
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def drop_bounding_set() -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP: call while still root)."""
    libc = _c()
    for cap in range(CAP_LAST_CAP_GUESS + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, f"drop capability {cap}")
