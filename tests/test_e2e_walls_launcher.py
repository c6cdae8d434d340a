"""
A compromised service stays under its launcher (issue 12, the launcher's half), checked by
the kernel's view.

As root (CI is root), a hostile service (tests/sites/runaway.py) forks, leaves orphans that
sleep for ever, ignores SIGTERM, allocates past its memory limit, floods its stdout and sends
the launcher control messages only the dispatcher may send.  These tests read what the
kernel says (``/proc/PID/status``, ``/proc/PID/ns/pid``, ``/proc/PID/cgroup``,
``/proc/PID/limits``) and what the launcher logs.  Not root: they skip (no jails, no
namespaces, no limits).

Processes vanishing have no event a test can wait on, so L{until} polls ``/proc`` with a
deadline; everything else waits for a log line.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable


from tests.e2e import E2ETestCase, Site, process_exists, request_bytes

IS_ROOT = os.geteuid() == 0

SERVICES = """
[service:runaway]
resource = tests.sites.runaway:Runaway
paths = /runaway
fork = yes

[service:nofork]
resource = tests.sites.runaway:Runaway
paths = /nofork

[service:hello]
resource = services.hello:Hello
paths = /hello

[service:lazy]
resource = services.hello:Hello
paths = /lazy
lazy = yes
"""

DRAIN, KILL = 2.0, 1.0


def okws(**extra: Any) -> str:
    lines = {
        "restart_delay_min": "0.2",
        "heartbeat_interval": "1",
        "drain_timeout": str(DRAIN),
        "kill_timeout": str(KILL),
        **{k: str(v) for k, v in extra.items()},
    }
    return "\n".join(f"{k} = {v}" for k, v in lines.items()) + "\n"


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def namespace_members(pid: int) -> list[int]:
    """Every host pid in the PID namespace whose init is C{pid}."""
    target = pid_namespace(pid)
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    members.append(int(entry))
            except OSError:
                continue
    return sorted(members)


def vm_rss_kib(pid: int) -> int:
    return int(status_of(pid)["VmRSS"].split()[0])


def until(check: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll C{check} (a look at /proc) until true; return the seconds it took, or fail saying C{what}."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def get_json(site: Site, path: str, timeout: float = 30.0) -> dict[str, Any]:
    r = site.get(path, timeout=timeout)
    assert r.status == 200, (path, r.status, r.body[:300])
    return json.loads(r.body)


def ctl_status(site: Site) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "okws_twisted.ctl", "--config", site.ini, "--json", "status"],
        capture_output=True, text=True, timeout=60, cwd=site.dir,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["ok"], answer
    return answer["result"]


def child_status(site: Site, name: str) -> dict[str, Any]:
    return next(c for c in ctl_status(site)["children"] if c["name"] == name)


def start(case: E2ETestCase, okws_text: str | None = None) -> Site:
    """A site of the test's own, stopped (SIGTERM: it removes its cgroups) when the test ends."""
    site = Site(SERVICES, okws_text or okws()).start()
    case.addCleanup(site.close)
    case.addCleanup(site.stop)  # first (clean-ups run last in, first out): SIGTERM removes its cgroups
    return site


_shared: Site | None = None


def shared_site() -> Site:
    """One site for the tests that leave every process as it was."""
    global _shared
    if _shared is None:
        _shared = Site(SERVICES, okws()).start()
        atexit.register(_shared.close)
        atexit.register(_shared.stop)  # first: SIGTERM removes its cgroups
    return _shared


class RootOnly(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: the launcher jails, namespaces and limits children only as root"


class TreeDeathTests(RootOnly):
    """A process's death is its whole tree's death."""

    def test_every_jailed_child_has_its_own_pid_namespace(self) -> None:
        site = shared_site()
        assert site.proc is not None
        ours = pid_namespace(site.proc.pid)
        seen = set()
        for name, pid in site.pids().items():
            ns = pid_namespace(pid)
            self.assertNotEqual(ns, ours, name)
            self.assertEqual(status_of(pid)["NSpid"].split()[-1], "1", f"{name} is not its namespace's init")
            seen.add(ns)
        self.assertEqual(len(seen), len(site.pids()), "two children share a PID namespace")
        # Its identity is the host pid all the same.
        self.assertEqual(get_json(site, "/nofork/x")["pid"], str(site.pids()["nofork.0"]))

    def test_orphan_dies_with_its_instance_killed_9(self) -> None:
        site = start(self)
        pid = site.pids()["runaway.0"]
        get_json(site, "/runaway/orphan")
        orphans = [m for m in namespace_members(pid) if m != pid]
        self.assertTrue(orphans, "the service left no orphan to test with")
        self.assertTrue(all(process_exists(o) for o in orphans))
        mark = site.mark()
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        site.wait_for(rf"runaway\.0 pid {pid} crashed \(signal 9\)", 5, after=mark)
        until(lambda: not any(process_exists(o) for o in orphans), 5, "the orphan outlived its instance")
        new = int(site.wait_for(r"started runaway\.0 as pid (\d+)", 5, after=mark).group(1))
        site.wait_for(rf"runaway\.0 pid {new} is ready", max(0.1, 5 - (time.monotonic() - killed)), after=mark)
        self.assertLess(time.monotonic() - killed, 5.0)
        self.assertEqual(get_json(site, "/runaway/x")["pid"], str(new))
        self.assertNotIn(f"pid {pid} exited: exit code 0", site.log_text())

    def test_sigterm_ends_every_process_and_orphan_within_the_bound(self) -> None:
        """drain_timeout + kill_timeout + 1 s, with an orphan, a hung instance, and one that also ignores SIGTERM."""
        site = start(self)
        assert site.proc is not None
        get_json(site, "/runaway/orphan")
        pid, hung = site.pids()["runaway.0"], site.pids()["nofork.0"]
        for path, who, sig in (("/runaway/hang?term=ignore", pid, signal.SIGTERM), ("/nofork/hang", hung, signal.SIGUSR2)):
            hang = site.connect()
            self.addCleanup(hang.close)
            hang.sendall(request_bytes("GET", path))
            until(lambda: int(status_of(who)["SigIgn"], 16) & (1 << (sig - 1)), 10, f"{path} never hung")
        everything = {m for child in site.pids().values() if process_exists(child) for m in namespace_members(child)}
        self.assertGreater(len(everything), len(site.pids()), "no orphan among the processes")
        sent = time.monotonic()
        site.proc.send_signal(signal.SIGTERM)
        bound = DRAIN + KILL + 1
        took = until(lambda: not any(process_exists(p) for p in everything), bound + 5, "processes outlived the stop")
        self.assertLessEqual(took, bound, f"the last process went after {took:.2f}s")
        site.proc.wait(bound + 5)
        self.assertLessEqual(time.monotonic() - sent, bound + 0.5, "the launcher itself took too long to exit")
        # SIGTERM (after drain_timeout) ends a hung instance, a PID namespace's init though it is;
        # one that ignores it gets SIGKILL (after kill_timeout more).
        site.wait_for(rf"nofork\.0 pid {hung} exited: exit code 143")
        site.wait_for(rf"runaway\.0 pid {pid} exited: signal 9")


class ForkTests(RootOnly):
    """No new processes unless the site says fork = yes; threads always."""

    def test_fork_refused_threads_work(self) -> None:
        site = shared_site()
        report = get_json(site, "/nofork/fork")
        self.assertEqual(
            {k: report[k] for k in ("os.fork", "subprocess", "posix_spawn", "clone3", "thread", "deferToThread")},
            {"os.fork": "EPERM", "subprocess": "EPERM", "posix_spawn": "EPERM", "clone3": "ENOSYS",
             "thread": "ok", "deferToThread": "ok"},
        )

    def test_fork_yes_may_fork(self) -> None:
        report = get_json(shared_site(), "/runaway/fork")
        self.assertEqual(
            {k: report[k] for k in ("os.fork", "subprocess", "posix_spawn", "clone3", "thread")},
            {"os.fork": "ok", "subprocess": "ok", "posix_spawn": "ok", "clone3": "ok", "thread": "ok"},
        )

    def test_the_kernel_holds_the_filters(self) -> None:
        pids = shared_site().pids()
        # network = none and fork = no: two filters; fork = yes: the network one only.
        self.assertEqual(status_of(pids["nofork.0"])["Seccomp_filters"], "2")
        self.assertEqual(status_of(pids["runaway.0"])["Seccomp_filters"], "1")
        for role in ("dispatcher", "logd", "pubd"):
            self.assertEqual(status_of(pids[role])["Seccomp"], "2", role)
            self.assertGreaterEqual(int(status_of(pids[role])["Seccomp_filters"]), 1, role)


def host_has_memory_cgroups() -> bool:
    """A v1 memory hierarchy, or a v2 one offering the memory controller (as the kernel lists them)."""
    if os.path.isdir("/sys/fs/cgroup/memory"):
        return True
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def memory_cgroup_of(pid: int) -> str | None:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            number, names, path = line.rstrip("\n").split(":", 2)
            if "memory" in names.split(","):
                return os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            if number == "0" and os.path.exists(os.path.join("/sys/fs/cgroup", path.lstrip("/"), "memory.max")):
                return os.path.join("/sys/fs/cgroup", path.lstrip("/"))
    return None


def memory_limit_of(cgroup: str) -> int:
    for name in ("memory.max", "memory.limit_in_bytes"):
        path = os.path.join(cgroup, name)
        if os.path.exists(path):
            with open(path) as f:
                return int(f.read())
    raise AssertionError(f"no memory limit file in {cgroup}")


def alloc_kills(site: Site, path: str) -> None:
    """Ask for C{path}; the instance must die rather than answer."""
    try:
        r = site.get(path, timeout=60)
    except (ConnectionError, socket.timeout):
        return
    raise AssertionError(f"{path} answered {r.status} {r.body[:200]!r}")


class MemoryLimitTests(RootOnly):
    """memory_limit: 1 GiB by default; the instance over it dies and comes back, no other notices."""

    def test_2gib_kills_only_that_instance(self) -> None:
        site = start(self)
        pids = site.pids()
        pid, hello = pids["nofork.0"], pids["hello.0"]
        if not host_has_memory_cgroups():
            raise self.skipTest("no memory cgroup on this host: test_rlimit_fallback is what runs here")
        cgroup = memory_cgroup_of(pid)
        assert cgroup is not None
        self.assertIn("/okws-", cgroup)
        self.assertEqual(memory_limit_of(cgroup), 1 << 30)
        for i, path in enumerate(["/nofork/alloc?mb=2048", "/nofork/memfd?mb=2048"]):
            mark = site.mark()
            alloc_kills(site, path)
            site.wait_for(rf"nofork\.0 pid {pid} crashed \(signal 9, killed at its memory_limit of 1073741824 bytes\)", 30, after=mark)
            pid = int(site.wait_for(r"started nofork\.0 as pid (\d+)", 10, after=mark).group(1))
            site.wait_for(rf"nofork\.0 pid {pid} is ready", 10, after=mark)
            self.assertEqual(get_json(site, "/nofork/x")["pid"], str(pid))
            r = site.get("/hello")
            self.assertEqual((r.status, r.header("x-okws-pid")), (200, str(hello)), f"after {path}")
        self.assertTrue(process_exists(hello))
        self.assertEqual(site.pids()["hello.0"], hello)

    def test_rlimit_fallback(self) -> None:
        """cgroups = no: RLIMIT_AS (MemoryError is fatal: exit 70) and RLIMIT_FSIZE caps a memfd."""
        site = start(self, okws(cgroups="no"))
        pid = site.pids()["nofork.0"]
        with open(f"/proc/{pid}/limits") as f:
            limits = f.read()
        self.assertRegex(limits, r"Max address space\s+1073741824\s+1073741824")
        self.assertRegex(limits, r"Max file size\s+1073741824\s+1073741824")
        self.assertNotIn("okws-", memory_cgroup_of(pid) or "")
        report = get_json(site, "/nofork/memfd?mb=2048", timeout=60)
        self.assertEqual((report["memfd"], report["written_mb"]), ("EFBIG", 1024))
        mark = site.mark()
        alloc_kills(site, "/nofork/alloc?mb=2048")
        site.wait_for(rf"nofork\.0 pid {pid} crashed \(exit code 70\)", 30, after=mark)
        new = int(site.wait_for(r"started nofork\.0 as pid (\d+)", 10, after=mark).group(1))
        site.wait_for(rf"nofork\.0 pid {new} is ready", 10, after=mark)
        self.assertEqual(get_json(site, "/nofork/x")["pid"], str(new))


class ControlRoleTests(RootOnly):
    """Control messages only from the role that may send them."""

    def test_want_from_a_service_is_refused(self) -> None:
        site = shared_site()
        pid = site.pids()["nofork.0"]
        mark = site.mark()
        get_json(site, "/nofork/control?kind=want&service=lazy")
        site.wait_for(rf"refused want from nofork\.0 pid {pid}: a service may not send it", after=mark)
        hello = site.pids()["hello.0"]
        get_json(site, f"/nofork/control?kind=lost&pid={hello}&why=forged")
        site.wait_for(rf"refused lost from nofork\.0 pid {pid}: a service may not send it", after=mark)
        self.assertNotRegex("\n".join(site.lines[mark:]), r"started lazy\.0")
        self.assertEqual(site.get("/hello").header("x-okws-pid"), str(hello))
        get_json(site, "/nofork/control?kind=priority&normal=true")
        site.wait_for(rf"refused priority from nofork\.0 pid {pid}: a service may not send it", after=mark)
        self.assertGreaterEqual(child_status(site, "nofork.0")["refused"], 3)
        # The dispatcher may: the first request for the lazy service starts it.
        self.assertEqual(site.get("/lazy", timeout=60).status, 200)
        site.wait_for(r"starting lazy\.0: the first request for lazy service lazy", after=mark)


class OutputLimitTests(RootOnly):
    """A child's output costs the launcher neither memory nor the log."""

    def test_stdout_flood_does_not_grow_the_launcher(self) -> None:
        site = shared_site()
        assert site.proc is not None
        launcher = site.proc.pid
        mark = site.mark()
        get_json(site, "/nofork/flood?mb=1")  # the launcher's reading path warmed up
        before = vm_rss_kib(launcher)
        self.assertEqual(get_json(site, "/nofork/flood?mb=200", timeout=120)["flooded_mb"], 200)
        self.assertEqual(get_json(site, "/nofork/flood?mb=50&lines=1", timeout=120)["flooded_mb"], 50)
        grown = vm_rss_kib(launcher) - before
        self.assertLess(grown, 8 * 1024, f"the launcher grew by {grown} KiB")
        site.wait_for(r"nofork\.0 pid \d+ writes more output than is logged", after=mark)
        site.wait_for(r"nofork\.0 pid \d+: dropped \d+ bytes of its output", after=mark)
        dropped = child_status(site, "nofork.0")["output_dropped"]
        self.assertGreater(dropped["bytes"], 240 << 20)
        self.assertGreater(dropped["lines"], 0)
        logged = [line for line in site.lines[mark:] if "[nofork.0 pid" in line]
        self.assertLess(sum(map(len, logged)), 2 << 20, "more than the rate got into the log")
        self.assertTrue(any(line.endswith("… [cut]") for line in logged))
