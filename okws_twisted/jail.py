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
   bounded ``RLIMIT_NOFILE``, and the capability bounding set emptied; the
   memory, file size and process limits the launcher could not set with a
   cgroup (``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``).
6. Unless the child may fork (a service with ``fork = yes``): a seccomp
   filter refusing every new process (``fork``, ``vfork``, ``clone`` without
   ``CLONE_THREAD``: EPERM; ``clone3``, whose flags a filter cannot read:
   ENOSYS, so the C library falls back to ``clone``), as OpenSSH's privilege
   separation sandbox does.  Threads stay allowed.
7. For ``network = none``: a seccomp filter refusing every new non-Unix
   socket and every ``connect``, ``bind`` and ``listen`` (the empty network
   namespace already leaves nothing to reach; this also stops a process from
   listening on its own unreachable ports).

The launcher has already made the child the init of its own PID namespace
(L{okws_twisted.launcher.pidns}) and, where the kernel offers them, put it in
its own memory and pids cgroups.

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
    #: False: the seccomp filter of L{deny_new_processes} (threads only).
    may_fork: bool = True
    #: C{RLIMIT_AS}, C{RLIMIT_FSIZE}, C{RLIMIT_NPROC}; 0 leaves one as it is.
    address_space: int = 0
    file_size: int = 0
    processes: int = 0

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
            "may_fork": self.may_fork,
            "address_space": self.address_space,
            "file_size": self.file_size,
            "processes": self.processes,
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
            may_fork=bool(value["may_fork"]),
            address_space=int(value["address_space"]),
            file_size=int(value["file_size"]),
            processes=int(value["processes"]),
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
    for limit, value in (
        (resource.RLIMIT_AS, spec.address_space),
        (resource.RLIMIT_FSIZE, spec.file_size),
        (resource.RLIMIT_NPROC, spec.processes),
    ):
        if value:
            resource.setrlimit(limit, (value, value))
    if not spec.may_fork:
        deny_new_processes()
    if spec.new_net:
        deny_network_sockets()
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise JailError("could become root again")


# seccomp filters, each a classic BPF program over struct seccomp_data (nr at
# offset 0, arch at 4, args[0] at 16).  Filters stack: each one installed
# applies for good, to this process and everything it starts.
_SECCOMP_MODE_FILTER = 2
_PR_SET_SECCOMP = 22
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
#: Kill the whole process (not just the thread): a call from another ABI.
_RET_KILL_PROCESS = 0x80000000
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: (socket, connect, bind, listen) system call numbers.
_NET_CALLS = {"x86_64": (41, 42, 49, 50), "aarch64": (198, 203, 200, 201)}
#: (clone, clone3, the calls that always make a process: fork and vfork; aarch64 has neither).
_PROCESS_CALLS = {"x86_64": (56, 435, (57, 58)), "aarch64": (220, 435, ())}
_AF_UNIX = 1
CLONE_THREAD = 0x00010000
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _machine(why: str) -> str:
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        raise JailError(f"{why} needs a seccomp filter for {machine}, which okws does not have")
    return machine


def _prologue(machine: str) -> list[tuple[int, int, int, int]]:
    """Kill calls from another ABI (i386's int 0x80, x32); leave the call number loaded."""
    return [
        (_LD_W_ABS, 0, 0, 4),                                 # arch
        (_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),                 # our arch? skip the kill
        (_RET_K, 0, 0, _RET_KILL_PROCESS),                    # another ABI: kill
        (_LD_W_ABS, 0, 0, 0),                                 # syscall number
        (_JGE_K, 0, 1, 0x40000000),                           # x32 ABI numbers: kill
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
    ]


def _install(prog: list[tuple[int, int, int, int]]) -> None:
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    _check(_c().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def deny_network_sockets() -> None:
    """Install a seccomp filter: no non-Unix socket, no connect, bind or listen (EPERM).

    For network = none, defence in depth: the empty network namespace already
    leaves nothing to connect to, but it would still let a process bind and
    listen on its own unreachable ports.  Sockets the process already holds,
    and those passed to it, keep working.
    """
    machine = _machine("network = none")
    nr_socket, nr_connect, nr_bind, nr_listen = _NET_CALLS[machine]
    deny = _RET_ERRNO | errno.EPERM
    prog = _prologue(machine) + [
        (_JEQ_K, 4, 0, nr_connect),                           # 6 -> 11 deny
        (_JEQ_K, 3, 0, nr_bind),                              # 7 -> 11
        (_JEQ_K, 2, 0, nr_listen),                            # 8 -> 11
        (_JEQ_K, 3, 0, nr_socket),                            # 9 -> 13
        (_RET_K, 0, 0, _RET_ALLOW),                           # 10
        (_RET_K, 0, 0, deny),                                 # 11
        (_RET_K, 0, 0, _RET_ALLOW),                           # 12 (unused)
        (_LD_W_ABS, 0, 0, 16),                                # 13: socket's family (args[0], low word)
        (_JEQ_K, 0, 1, _AF_UNIX),                             # 14
        (_RET_K, 0, 0, _RET_ALLOW),                           # 15
        (_RET_K, 0, 0, deny),                                 # 16
    ]
    _install(prog)


def deny_new_processes() -> None:
    """Install a seccomp filter: no new process (EPERM), threads allowed.

    C{fork} and C{vfork} are refused; C{clone} only with C{CLONE_THREAD} (the
    kernel makes that imply C{CLONE_SIGHAND} and C{CLONE_VM}: a thread of this
    process).  C{clone3} passes its flags behind a pointer a filter cannot
    read, so it gets ENOSYS, on which the C library falls back to C{clone}
    (EPERM there would break every new thread).
    """
    machine = _machine("fork = no")
    nr_clone, nr_clone3, always = _PROCESS_CALLS[machine]
    deny = _RET_ERRNO | errno.EPERM
    prog = _prologue(machine)
    for nr in always:
        prog += [(_JEQ_K, 0, 1, nr), (_RET_K, 0, 0, deny)]
    prog += [
        (_JEQ_K, 0, 1, nr_clone3),
        (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
        (_JEQ_K, 1, 0, nr_clone),                             # clone: look at its flags
        (_RET_K, 0, 0, _RET_ALLOW),                           # any other call
        (_LD_W_ABS, 0, 0, 16),                                # clone's flags (args[0], low word)
        (_JSET_K, 0, 1, CLONE_THREAD),
        (_RET_K, 0, 0, _RET_ALLOW),                           # a thread of this process
        (_RET_K, 0, 0, deny),                                 # a new process
    ]
    _install(prog)


def drop_bounding_set() -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP: call while still root)."""
    libc = _c()
    for cap in range(CAP_LAST_CAP_GUESS + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, f"drop capability {cap}")
