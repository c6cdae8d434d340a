# -*- test-case-name: tests.launcher.test_cgroups -*-
"""
The memory and pids cgroups of service instances (no OKWS counterpart; Linux cgroups v1 and v2).

A root launcher makes, under its own cgroup in each hierarchy that offers the controller,
a directory for its run (``okws-PID-RUN``) and in it one cgroup per instance launch
(``hello.0-3``), writes the instance's limits there, and moves the new process in (its host
pid into ``cgroup.procs``) before it sends the process its configuration, so the instance
is inside its limits before it enters its jail or runs a line of role code; everything it
starts later is born inside too.  The directory is removed when the process has exited.

cgroup v2 is used for a controller when the launcher's own v2 cgroup lists it in
``cgroup.controllers`` and lets okws enable it for its subtree (a service manager that
delegates the cgroup allows that; a non-delegated one refuses with EBUSY); otherwise a v1
hierarchy of that controller; otherwise none, and L{okws_twisted.launcher.limits} falls
back to rlimits.  The paths come from C{/proc/self/mountinfo} and C{/proc/self/cgroup}, read
from C{proc} so that tests can give a tree of their own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CONTROLLERS = ("memory", "pids")
_STALE = re.compile(r"okws-(\d+)-[0-9a-f]+")


@dataclass(frozen=True)
class Hierarchy:
    """Where one controller lives: cgroup C{version} 1 or 2, and the launcher's own cgroup in it."""

    controller: str
    version: int
    own: str


def find(proc: str = "/proc/self") -> dict[str, Hierarchy]:
    """The hierarchies of L{CONTROLLERS} this process could use (v2 preferred)."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    with open(os.path.join(proc, "mountinfo")) as f:
        for line in f:
            fields = line.split()
            if "-" not in fields:
                continue
            dash = fields.index("-")
            root, point = fields[3], _unescape(fields[4])
            fstype, options = fields[dash + 1], fields[dash + 3].split(",") if len(fields) > dash + 3 else []
            if fstype == "cgroup2" and v2 is None:
                v2 = (root, point)
            elif fstype == "cgroup":
                for controller in CONTROLLERS:
                    if controller in options and controller not in v1:
                        v1[controller] = (root, point)
    paths: dict[str, str] = {}
    with open(os.path.join(proc, "cgroup")) as f:
        for line in f:
            number, names, path = line.rstrip("\n").split(":", 2)
            if number == "0" and not names:
                paths[""] = path
            for name in names.split(","):
                if name in CONTROLLERS:
                    paths[name] = path
    found: dict[str, Hierarchy] = {}
    for controller in CONTROLLERS:
        if v2 is not None and "" in paths:
            own = _inside(v2, paths[""])
            if own is not None and controller in _words(os.path.join(own, "cgroup.controllers")):
                found[controller] = Hierarchy(controller, 2, own)
                continue
        if controller in v1 and controller in paths:
            own = _inside(v1[controller], paths[controller])
            if own is not None and os.path.isdir(own):
                found[controller] = Hierarchy(controller, 1, own)
    return found


class InstanceCgroup:
    """One instance launch's cgroups, one per controller that could be made."""

    def __init__(self, dirs: dict[str, tuple[Hierarchy, str]]) -> None:
        self.dirs = dirs

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.dirs)

    def join(self, pid: int) -> None:
        """Move process C{pid} in; @raise OSError: it could not be."""
        for _hierarchy, path in self.dirs.values():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        """How many times the kernel's OOM killer ended a process here (0 if it cannot say)."""
        if "memory" not in self.dirs:
            return 0
        hierarchy, path = self.dirs["memory"]
        name = "memory.events" if hierarchy.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(path, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> bool:
        """Remove the directories; C{False} while some still hold a task (try again later)."""
        for controller, (_hierarchy, path) in list(self.dirs.items()):
            if _rmdir(path):
                del self.dirs[controller]
        return not self.dirs


class RunCgroups:
    """The launcher's cgroups for one run: C{OWN/okws-PID-RUN/INSTANCE} in each hierarchy.

    C{problems} says, per controller, why it could not be used (the launcher logs it).
    """

    def __init__(self, hierarchies: dict[str, Hierarchy], run: str) -> None:
        self.runs: dict[str, tuple[Hierarchy, str]] = {}
        self.problems: list[str] = []
        self.pending: list[InstanceCgroup] = []
        for controller, hierarchy in hierarchies.items():
            _remove_stale(hierarchy.own)
            path = os.path.join(hierarchy.own, f"okws-{os.getpid()}-{run}")
            try:
                if hierarchy.version == 2:
                    _enable(hierarchy.own, controller)
                os.mkdir(path, 0o755)
                if hierarchy.version == 2:
                    _enable(path, controller)
            except OSError as e:
                _rmdir(path)
                self.problems.append(f"{controller} (cgroup v{hierarchy.version} at {hierarchy.own}): {e.strerror or e}")
                continue
            self.runs[controller] = (hierarchy, path)

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.runs)

    def make(self, name: str, memory: int, pids: int) -> tuple[InstanceCgroup, list[str]]:
        """An instance's cgroups with their limits, and what could not be made."""
        dirs: dict[str, tuple[Hierarchy, str]] = {}
        problems: list[str] = []
        for controller, (hierarchy, run) in self.runs.items():
            path = os.path.join(run, name)
            try:
                os.mkdir(path, 0o755)
                if controller == "memory":
                    _limit_memory(hierarchy, path, memory)
                else:
                    _write(os.path.join(path, "pids.max"), str(pids))
            except OSError as e:
                _rmdir(path)
                problems.append(f"{controller}: {e.strerror or e}")
                continue
            dirs[controller] = (hierarchy, path)
        return InstanceCgroup(dirs), problems

    def release(self, cgroup: InstanceCgroup) -> None:
        """Remove an exited instance's cgroups, now or at a later L{sweep}."""
        if not cgroup.remove():
            self.pending.append(cgroup)

    def sweep(self) -> None:
        self.pending = [cg for cg in self.pending if not cg.remove()]

    def close(self) -> None:
        """Remove the run's directories (once every instance's are gone)."""
        self.sweep()
        for controller, (_hierarchy, path) in list(self.runs.items()):
            if _rmdir(path):
                del self.runs[controller]


def _limit_memory(hierarchy: Hierarchy, path: str, limit: int) -> None:
    if hierarchy.version == 2:
        _write(os.path.join(path, "memory.max"), str(limit))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if os.path.exists(os.path.join(path, name)):
                _write(os.path.join(path, name), value)
        return
    _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
    memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):
        # Memory plus swap: no more than the memory itself, so the instance cannot swap past it.
        _write(memsw, str(limit))


def _enable(path: str, controller: str) -> None:
    """Let C{path}'s children have C{controller} (cgroup v2)."""
    if controller not in _words(os.path.join(path, "cgroup.subtree_control")):
        _write(os.path.join(path, "cgroup.subtree_control"), f"+{controller}")


def _remove_stale(own: str) -> None:
    """Remove what launchers that no longer run left behind (killed with -9, say)."""
    try:
        names = os.listdir(own)
    except OSError:
        return
    for name in names:
        match = _STALE.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        run = os.path.join(own, name)
        for entry in os.scandir(run):
            if entry.is_dir(follow_symlinks=False):
                _rmdir(entry.path)
        _rmdir(run)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _words(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def _rmdir(path: str) -> bool:
    """rmdir; C{True} if C{path} is gone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # EBUSY: a task is still inside
    return True


def _inside(mount: tuple[str, str], path: str) -> str | None:
    """The directory of cgroup C{path} under a mount of hierarchy root C{mount[0]} at C{mount[1]}."""
    root, point = mount
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    relative = path[len(root):] if root != "/" else path
    return os.path.join(point, relative.lstrip("/"))


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
