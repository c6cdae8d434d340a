"""
The admin listener as a load balancer and a monitoring system see it (issue 15, items 7 and 13):
C{/health} follows C{[okws] health} when a service has failed; C{/metrics} has every process's
memory, CPU and open files, and the build.

Real processes and HTTP over loopback (see L{tests.e2e}).
"""

from __future__ import annotations

import os
import re
import socket
import time


from tests.e2e import E2ETestCase, Response, Site, free_port, read_response, request_bytes
from tests.test_e2e_operations import ctl

SERVICES = """
[service:hello]
resource = services.hello:Hello
paths = /hello

[service:crashy]
resource = tests.sites.crashing:Crash
paths = /crash
"""


def admin_get(port: int, path: str) -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request_bytes("GET", path, {"Connection": "close"}))
        return read_response(s)


class HealthTests(E2ETestCase):
    def test_failed_service(self) -> None:
        """
        A service whose crash budget is spent: C{health = all} says 503 and names it;
        C{health = any} (after a reload) says 200, still naming it.
        """
        admin = free_port()
        site = Site(SERVICES, f"admin = tcp:{admin}\ncrash_budget = 0\n")
        self.addCleanup(site.close)
        site.start()
        self.assertEqual(admin_get(admin, "/health").status, 200)
        mark = site.mark()
        try:
            site.get("/crash?die=1")
        except (ConnectionError, OSError):
            pass
        site.wait_for(r"crashy\.0 crashed 1 times", after=mark)
        deadline = time.monotonic() + 20
        while True:
            r = admin_get(admin, "/health")
            # 503 "starting" first (its instance is gone), "failed" once the launcher says so.
            if r.status == 503 and b"failed" in r.body:
                break
            self.assertLess(time.monotonic(), deadline, f"health still says {r.status} {r.body!r}")
            time.sleep(0.05)  # the launcher tells the dispatcher on its next status push
        self.assertEqual(r.body, b"unhealthy\nfailed: crashy\n")
        self.assertEqual(site.get("/crash").status, 503)
        with open(site.ini) as f:
            text = f.read()
        with open(site.ini, "w") as f:
            f.write(text.replace("crash_budget = 0\n", "crash_budget = 0\nhealth = any\n"))
        p = ctl(site, "reload")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        r = admin_get(admin, "/health")
        self.assertEqual((r.status, r.body), (200, b"ok\nfailed: crashy\n"))


SAMPLE = re.compile(r'^(\w+)\{role="(\w*)",service="([\w-]*)",instance="(\d*)"\} (\S+)$')


class ProcessMetricsTests(E2ETestCase):
    def test_every_process(self) -> None:
        """
        C{/metrics} has each process's memory, CPU and open files, as the kernel
        sees them, and the build; the launcher samples them (children are not
        dumpable: only it may read their /proc).
        """
        admin = free_port()
        site = Site(SERVICES, f"admin = tcp:{admin}\nheartbeat_interval = 0.5\n")
        self.addCleanup(site.close)
        site.start()
        pids = site.pids()
        deadline = time.monotonic() + 20
        while True:
            text = admin_get(admin, "/metrics").body.decode()
            samples: dict[tuple[str, str, str, str], float] = {}
            for line in text.splitlines():
                m = SAMPLE.match(line)
                if m:
                    samples[m.group(1, 2, 3, 4)] = float(m.group(5))
            rss = {k[1:]: v for k, v in samples.items() if k[0] == "process_resident_memory_bytes"}
            if len(rss) >= len(pids) + 1:
                break
            self.assertLess(time.monotonic(), deadline, f"not every process in /metrics yet:\n{text}")
            time.sleep(0.1)  # the launcher samples once a heartbeat
        names = {("launcher", "", ""), ("logd", "", ""), ("pubd", "", ""), ("dispatcher", "", ""),
                 ("service", "hello", "0"), ("service", "crashy", "0")}
        self.assertEqual(set(rss), names)
        pid_of = {("logd", "", ""): pids["logd"], ("dispatcher", "", ""): pids["dispatcher"],
                  ("service", "hello", "0"): pids["hello.0"], ("launcher", "", ""): site.proc.pid}  # type: ignore[union-attr]
        for key, pid in pid_of.items():
            with open(f"/proc/{pid}/statm") as f:
                kernel_rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            self.assertGreater(rss[key], 1_000_000, key)
            self.assertLess(abs(rss[key] - kernel_rss) / kernel_rss, 0.5, key)
        fds = {k[1:]: v for k, v in samples.items() if k[0] == "process_open_fds"}
        # The dispatcher: its listener, the admin listener, control and channels at least.
        self.assertGreaterEqual(fds[("dispatcher", "", "")], 4)
        # What the kernel says, once a sample was taken after the site settled.
        deadline = time.monotonic() + 20
        while True:
            kernel_fds = len(os.listdir(f"/proc/{pids['dispatcher']}/fd"))
            line = f'process_open_fds{{role="dispatcher",service="",instance=""}} {kernel_fds}'
            if line in admin_get(admin, "/metrics").body.decode().splitlines():
                break
            self.assertLess(time.monotonic(), deadline, f"the dispatcher's fds never matched the kernel's {kernel_fds}")
            time.sleep(0.1)
        cpu = {k[1:]: v for k, v in samples.items() if k[0] == "process_cpu_seconds_total"}
        self.assertGreater(cpu[("launcher", "", "")], 0)
        self.assertIn("# TYPE process_cpu_seconds_total counter", text)
        self.assertRegex(text, r'\nokws_build_info\{version="0\.1\.0",twisted="[\d.]+\w*",python="3\.[\d.]+"\} 1\n')
