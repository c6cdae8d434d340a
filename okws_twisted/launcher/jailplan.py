# -*- test-case-name: tests.launcher.test_jailplan -*-
"""
The launcher's side of privilege separation (OKWS okld's uid assignment and jail set-up).

When started as root, the launcher gives every child its own uid and gid
(per service; instances of one service share them), taken from the
configured ``uid_range`` unless a service names its own, skipping ids that
exist in ``/etc/passwd`` or ``/etc/group`` or own a running process; and it
plans each child's jail (L{okws_twisted.jail.JailSpec}): which host paths the
child sees, read-only unless its job is to write them.  The launcher never
imports site code to do so: a service's package is located with
``importlib.util.find_spec`` on its top-level name, which reads no module.
"""

from __future__ import annotations

import grp
import importlib.machinery
import os
import pwd
import stat
import sys
from typing import Iterable

from twisted.logger import Logger

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.config.databases import DatabaseConfig
from okws_twisted.jail import Bind, JailSpec, make_dirs

__all__ = ["STATIC_ROOT", "Bind", "JailSpec", "UidPlan", "dbproxy_binds", "jail_for", "service_binds", "static_binds", "role_binds", "python_binds"]

#: Host paths every jailed Python process needs, read-only: the dynamic
#: loader's libraries (twisted.web imports zlib, which links libz) and cache.
SYSTEM_BINDS = ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache")
ROLE_NOFILE = 4096

log = Logger(namespace="okws")


def uids_in_use() -> set[int]:
    """Every uid and gid the system already knows of or runs processes as."""
    used = {p.pw_uid for p in pwd.getpwall()} | {p.pw_gid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith(("Uid:", "Gid:")):
                        used.update(int(x) for x in line.split()[1:])
        except OSError:
            continue
    return used


class UidPlan:
    """Assigns ids from the site's range, each once, skipping those in use."""

    def __init__(self, site: SiteConfig, used: set[int]) -> None:
        self._next = site.uid_range[0]
        self._last = site.uid_range[1]
        fixed = {site.dispatcher_uid, site.logd_uid, site.pubd_uid} - {0}
        self._used = set(used) | fixed | {s.uid for s in site.services if s.uid} | {s.gid for s in site.services if s.gid}
        self._used |= {d.uid for d in site.databases if d.uid} | {d.gid for d in site.databases if d.gid}
        self._fixed = {"dispatcher": site.dispatcher_uid, "logd": site.logd_uid, "pubd": site.pubd_uid}
        self._given: dict[str, tuple[int, int]] = {}

    def ids_for(self, key: str, service: ServiceConfig | DatabaseConfig | None = None) -> tuple[int, int]:
        """The (uid, gid) of C{key} (``"dispatcher"``, ``"service:hello"``, ``"dbproxy:main"``, ...);
        C{service} (a service or a database section) may name its own."""
        if key in self._given:
            return self._given[key]
        if service is not None and service.uid:
            ids = (service.uid, service.gid or service.uid)
        elif self._fixed.get(key):
            ids = (self._fixed[key],) * 2
        else:
            ids = (self._take(),) * 2
        self._given[key] = ids
        return ids

    def _take(self) -> int:
        while self._next <= self._last:
            candidate = self._next
            self._next += 1
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate
        raise RuntimeError("uid_range is exhausted: widen it")


def python_binds() -> list[Bind]:
    """The interpreter, its virtualenv and the okws package, read-only."""
    import okws_twisted

    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.abspath(okws_twisted.__file__))]
    paths += [p for p in SYSTEM_BINDS if os.path.exists(p)]
    return [Bind(p) for p in _dedupe(paths)]


def package_of(module: str, search: list[str]) -> str | None:
    """The directory (or file) of C{module}'s top-level package, found without importing it."""
    top = module.split(".", 1)[0]
    spec = importlib.machinery.PathFinder.find_spec(top, search)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return spec.origin


def service_binds(site: SiteConfig, service: ServiceConfig) -> list[Bind]:
    """What one service may import from besides Python itself: its own package."""
    module = service.resource.partition(":")[0]
    found = package_of(module, [site.base_dir, *sys.path])
    return [Bind(found)] if found else []


#: Where a static pool's root appears in its jail.
STATIC_ROOT = "/files"


def static_binds(service: ServiceConfig, uid: int, gid: int) -> list[Bind]:
    """A static pool's one directory: its root, read-only, at L{STATIC_ROOT}.

    As the templates are for the publisher: a tree the pool's uid can already read is left
    alone; otherwise its group is given read access (never write).
    """
    if not readable_tree(service.root, uid, gid):
        changed = grant_read(service.root, gid)
        if changed:
            log.info(
                "static:{name}: gave group {gid} read access to {root} ({changed} files and directories; "
                "directories set-group-id) so the static pool (uid {uid}) can read it; "
                "a tree others may read (chmod -R o+rX) is left as it is",
                name=service.name, root=service.root, gid=gid, uid=uid, changed=changed,
            )
    return [Bind(service.root, target=STATIC_ROOT)]


def scratch_dir(site: SiteConfig, service: ServiceConfig) -> str:
    return os.path.join(site.jail_root, "scratch", service.name)


def jail_for(
    site: SiteConfig,
    name: str,
    uid: int,
    gid: int,
    binds: Iterable[Bind] = (),
    new_net: bool = False,
    nofile: int = ROLE_NOFILE,
    may_fork: bool = True,
) -> JailSpec:
    return JailSpec(
        root=os.path.join(site.jail_root, name),
        uid=uid,
        gid=gid,
        binds=tuple(python_binds()) + tuple(binds),
        nofile=nofile,
        new_net=new_net,
        may_fork=may_fork,
    )


def role_binds(site: SiteConfig, role: str, uid: int, gid: int) -> list[Bind]:
    """The directories a helper process's job needs (none for the dispatcher)."""
    if role == "pubd":
        if not readable_tree(site.templates, uid, gid):
            changed = grant_read(site.templates, gid)
            if changed:
                log.info(
                    "templates: gave group {gid} read access to {root} ({changed} files and directories; "
                    "directories set-group-id) so the template publisher (uid {uid}) can read it; "
                    "a tree others may read (chmod -R o+rX) is left as it is",
                    root=site.templates, gid=gid, uid=uid, changed=changed,
                )
        return [Bind(site.templates)]
    if role == "logd":
        # Only the log daemon's uid may write (or even list) the logs.
        os.makedirs(site.log_dir, mode=0o750, exist_ok=True)
        for dirpath, _dirs, files in os.walk(site.log_dir):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                if not os.path.islink(name):
                    os.chown(name, uid, gid)
        os.chmod(site.log_dir, 0o750)
        return [Bind(site.log_dir, writable=True)]
    if role == "tls":
        # The key and certificate files themselves (not their directories), read-only;
        # the TLS front's group may read them, no one else is given anything.
        files = sorted({p for l in site.listen if l.tls for p in (l.private_key, l.cert_key) if p})
        for path in files:
            grant_file_read(path, gid)
        # A tls: listener's certificate directory, read-only, readable by the TLS front's group.
        dirs = sorted({l.sni_dir for l in site.listen if l.sni_dir})
        for path in dirs:
            grant_read(path, gid)
        return [Bind(path) for path in [*files, *dirs]]
    return []


def dbproxy_binds(database: DatabaseConfig, uid: int, gid: int) -> list[Bind]:
    """What a database proxy's jail shows: for SQLite, only the database file's directory,
    writable (WAL keeps its -wal and -shm files beside the database), made the proxy's
    alone (0700, the files 0600); for PostgreSQL, the password file (readable by the
    proxy's group) and, for a Unix-socket url, the server's socket directory."""
    if database.engine == "sqlite":
        folder = os.path.dirname(database.path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chown(folder, uid, gid)
        os.chmod(folder, 0o700)
        base = os.path.basename(database.path)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if (name == base or name.startswith(base + "-")) and os.path.isfile(path) and not os.path.islink(path):
                os.chown(path, uid, gid)
                os.chmod(path, 0o600)
        return [Bind(folder, writable=True)]
    binds = []
    if database.password_file:
        grant_file_read(database.password_file, gid)
        binds.append(Bind(database.password_file))
    if database.socket_dir:
        binds.append(Bind(database.socket_dir))
    return binds


def grant_file_read(path: str, gid: int) -> None:
    """Let group C{gid} read the one file C{path} (the TLS front's key or certificate)."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return
    os.chown(real, -1, gid)
    os.chmod(real, (os.stat(real).st_mode & 0o7777) | 0o040)


def _may_read(st: os.stat_result, uid: int, gid: int, need: int) -> bool:
    """Whether a process with C{uid} and C{gid} (no other groups) has the C{need} bits (rwx as 4/2/1)."""
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def readable_tree(root: str, uid: int, gid: int) -> bool:
    """Whether C{uid}/C{gid} can already read every file and enter every directory of the tree."""
    if not os.path.isdir(root):
        return True
    for dirpath, _dirnames, filenames in os.walk(root):
        if not _may_read(os.lstat(dirpath), uid, gid, 0o5):
            return False
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISLNK(st.st_mode) and not _may_read(st, uid, gid, 0o4):
                return False
    return True


def grant_read(root: str, gid: int) -> int:
    """Let group C{gid} read the tree at C{root} (and what is added to it later); how many entries changed.

    Directories get the set-group-id bit, so files created in them later
    belong to the group too.  Write permission is never given.  Entries
    that already allow it are left as they are.
    """
    if not os.path.isdir(root):
        return 0
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            st = os.lstat(name)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode & 0o7777
            wanted = mode | (0o2050 if stat.S_ISDIR(st.st_mode) else 0o040)
            if st.st_gid == gid and mode == wanted:
                continue
            os.chown(name, -1, gid)
            os.chmod(name, wanted)
            changed += 1
    return changed


def prepare_jail_root(site: SiteConfig) -> None:
    """The jail root: owned by root, not writable by anyone else."""
    make_dirs(site.jail_root)
    os.chown(site.jail_root, 0, 0)
    os.chmod(site.jail_root, 0o755)


def prepare_scratch(site: SiteConfig, service: ServiceConfig, uid: int, gid: int) -> str:
    """A service's opt-in writable directory, owned by it alone."""
    path = scratch_dir(site, service)
    make_dirs(os.path.dirname(path))
    make_dirs(path, 0o700)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)
    return path


def _dedupe(paths: list[str]) -> list[str]:
    seen: list[str] = []
    for p in paths:
        if p and p not in seen:
            seen.append(p)
    return seen
