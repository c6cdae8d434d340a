"""
The admin listener as a load balancer and a monitoring system see it (issue 15, items 7 and 13):
C{/health} follows C{[okws] health} when a service has failed; C{/metrics} has every process's
memory, CPU and open files, and the build.

Real processes and HTTP over loopback (see L{tests.e2e}).
"""

from __future__ import annotations

import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import Response, Site, free_port, read_response, request_bytes
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


class HealthTests(SynchronousTestCase):
    def test_failed_service(self) -> None:
        """
        A service whose crash budget is spent: C{health = all} says 503 and names it;
        C{health = any} (after a reload) says 200, still naming it.
        """
        admin = free_port()
        site = Site(SERVICES, f"admin = tcp:{admin}\ncrash_budget = 0\n")
        self.addCleanup(site.kill)
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
            if r.status == 503:
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
