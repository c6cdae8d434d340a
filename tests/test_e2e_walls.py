"""
A compromised service stays inside its walls (issue 12): what it can send over its own channels.

Run as root (CI is root), each test starts a real site with a hostile service
(L{tests.sites.hostile}) that writes to its own handoff and templates channels
past every check of the runtime's own, as injected code would, and a victim
service (L{tests.sites.echo}) that reports what it sees.  What the tests check
comes from outside okws where it can: the victim's answers and the access log,
the dispatcher's and the publisher's memory (C{VmRSS}) and descriptors
(C{/proc/PID/fd}), the kernel's TCP table (C{/proc/net/tcp}); and from the
dispatcher's own log lines and its C{okws_misbehaviour_total} metric.

The launcher's half of "lost means relaunched" is another change: here the
tests check that the dispatcher or the publisher drops the channel and sends
the launcher ``lost`` (its log says so).
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import threading
import time
import urllib.parse


from tests.e2e import E2ETestCase, Site, free_port, read_response, request_bytes, wait_until

IS_ROOT = os.geteuid() == 0

SERVICES = """
[service:evil]
resource = tests.sites.hostile:Hostile
paths = /evil
instances = 2

[service:b]
resource = tests.sites.echo:Echo
paths = /b

[service:hello]
resource = services.hello:Hello
paths = /hello
"""

BODY_TIMEOUT = 4.0

OKWS = f"""
restart_delay_min = 0.2
restart_delay_max = 2
head_timeout = 10
queue_timeout = 30
body_timeout = {BODY_TIMEOUT}
"""

#: Bound on every wait for something that must happen.
WAIT = 20.0
#: How much a receiver's resident memory may grow under a flood (the flood itself is gigabytes).
RSS_GROWTH = 32 << 20


def vm(pid: int, key: str = "VmRSS") -> int:
    """Resident memory of C{pid} (C{VmHWM}: its peak so far), in bytes, as the kernel counts it."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def close_wait(port: int) -> list[str]:
    """Server-side sockets of C{port} in CLOSE_WAIT (the peer closed, we never did), from the kernel."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    cols = row.split()
                    if cols[1].endswith(f":{port:04X}") and cols[3] == "08":
                        found.append(row.strip())
        except FileNotFoundError:
            continue
    return found


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return None


class WallsTestCase(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: the hostile service must run jailed, as in production"

    def start(self, services: str = SERVICES, okws: str = OKWS) -> Site:
        self.admin_port = free_port()
        site = Site(services, okws + f"admin = tcp:{self.admin_port}\n").start()
        self.addCleanup(site.close)
        self.site = site
        return site

    def metrics(self) -> str:
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=10) as s:
            s.sendall(request_bytes("GET", "/metrics", {"Connection": "close"}))
            return read_response(s).body.decode()

    def wait_misbehaviour(self, service: str, at_least: float) -> None:
        """Stats reach the admin listener at once; still a counter read from outside: poll it."""
        wait_until(
            lambda: (metric(self.metrics(), "okws_misbehaviour_total", service=service) or 0) >= at_least,
            WAIT, f"okws_misbehaviour_total{{service={service!r}}} >= {at_least}",
        )

    def evil(self, action: str, **query: object) -> dict:
        r = self.site.get(f"/evil/{action}?" + urllib.parse.urlencode(query), timeout=WAIT)
        self.assertEqual(r.status, 200, r)
        return json.loads(r.body)

    def dispatcher_said(self, pattern: str, after: int) -> re.Match[str]:
        return self.site.wait_for(r"\[dispatcher pid \d+\].*" + pattern, WAIT, after)

    def access_log_has(self, path: str) -> bool:
        return f" {path} " in self.site.read_log("access.log")


class HandbackTests(WallsTestCase):
    """Forged, repeated and stolen handbacks are refused, logged with the instance, and counted;
    the victim never sees them; a genuine handback's claims about the client are not believed."""

    def setUp(self) -> None:
        self.start()

    def test_forged_socket_pair_refused(self) -> None:
        """Its own socket pair, GET /b/forged in it, claiming 6.6.6.6 over TLS, under the id of the
        connection it really holds, then under an id it never had: nothing comes back."""
        mark = self.site.mark()
        report = self.evil("forge-back", path="/b/forged")
        self.assertEqual(report["answer"], "", "the forged request was answered")
        self.dispatcher_said(r"instance evil\.\d \(pid \d+\) misbehaved: refused a handback: .*is not that connection", mark)
        report = self.evil("forge-back", path="/b/forged-unknown", id=987654321)
        self.assertEqual(report["answer"], "")
        self.dispatcher_said(r"misbehaved: refused a handback: connection 987654321 is not held by any instance", mark)
        self.wait_misbehaviour("evil", 2)
        self.assertEqual(self.site.get("/b/real").status, 200)
        self.site.wait_for_log("access.log", lambda text: " /b/real " in text)
        self.assertFalse(self.access_log_has("/b/forged"))
        self.assertFalse(self.access_log_has("/b/forged-unknown"))
        self.assertNotIn("6.6.6.6", self.site.read_log("access.log"))

    def test_repeated_handback_and_spoofed_facts(self) -> None:
        """A genuine handback claiming 6.6.6.6 over TLS is taken with the real client's facts; the same
        handback again is refused: the victim answers once, to the real client, over plain TCP."""
        mark = self.site.mark()
        with self.site.connect(WAIT) as s:
            s.sendall(request_bytes("GET", "/evil/repeat-back?path=/b/repeated"))
            r = read_response(s)
            client_port = s.getsockname()[1]
        self.assertEqual(r.status, 200, r)
        seen = json.loads(r.body)
        self.assertEqual(seen["path"], "/b/repeated")
        self.assertEqual(seen["client"], ["127.0.0.1", client_port])
        self.assertEqual((seen["secure"], seen["tls"]), (False, None))
        self.dispatcher_said(r"instance evil\.\d \(pid \d+\) misbehaved: refused a handback: .*not held by any instance", mark)
        self.wait_misbehaviour("evil", 1)
        text = self.site.wait_for_log("access.log", lambda text: " /b/repeated " in text)
        self.assertEqual(text.count(" /b/repeated "), 1)
        self.assertNotIn("/b/repeated-again", text)
        self.assertNotIn("6.6.6.6", text)

    def test_another_instances_connection_refused(self) -> None:
        """Instance 1 hands back, under its id, the connection instance 0 holds: refused, and the
        connection stays instance 0's."""
        victim = self.site.connect(WAIT)
        self.addCleanup(victim.close)
        victim.sendall(request_bytes("GET", "/evil/whoami"))
        held = json.loads(read_response(victim).body)
        thief = self.site.connect(WAIT)
        self.addCleanup(thief.close)
        thief.sendall(request_bytes("GET", "/evil/whoami"))
        other = json.loads(read_response(thief).body)
        self.assertNotEqual(other["index"], held["index"], "both connections went to one instance")
        mark = self.site.mark()
        thief.sendall(request_bytes("GET", f"/evil/steal-back?id={held['id']}&path=/b/stolen"))
        self.assertEqual(json.loads(read_response(thief).body), {"sent": True})
        self.dispatcher_said(
            rf"instance evil\.{other['index']} \(pid \d+\) misbehaved: refused a handback: connection {held['id']} is held by another instance",
            mark,
        )
        victim.sendall(request_bytes("GET", "/evil/whoami"))
        self.assertEqual(json.loads(read_response(victim).body), held)
        self.wait_misbehaviour("evil", 1)
        self.assertFalse(self.access_log_has("/b/stolen"))

    def test_descriptors_on_acks_are_closed(self) -> None:
        """Fifty acks with sixteen descriptors each: the dispatcher holds none of them afterwards."""
        dispatcher = self.site.pids()["dispatcher"]
        self.assertEqual(self.site.get("/hello").status, 200)
        before = open_fds(dispatcher)
        self.assertEqual(self.evil("fds", kind="ack", count=50, n=16), {"sent": 50})
        self.wait_misbehaviour("evil", 50)
        self.assertLessEqual(open_fds(dispatcher), before + 4, "the dispatcher kept descriptors that came with acks")
        self.assertEqual(self.site.get("/hello").status, 200)


class FloodTests(WallsTestCase):
    """Oversized, endless and malformed messages on a channel: the receiver keeps its memory, other
    services their latency, and the offender loses its channel (the launcher is told)."""

    def setUp(self) -> None:
        self.start()

    def flood(self, receiver: str, channel: str, mode: str, lost: str) -> None:
        site = self.site
        pid = site.pids()[receiver]
        for _ in range(20):
            self.assertEqual(site.get("/hello").status, 200)
        rss = vm(pid)
        mark = site.mark()
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                t = time.monotonic()
                r = site.get("/hello", timeout=WAIT)
                latencies.append(time.monotonic() - t)
                assert r.status == 200, r

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            report = self.evil("flood", channel=channel, mode=mode, seconds=3)
        finally:
            stop.set()
            prober.join(WAIT)
        self.assertIsNotNone(report["error"], f"the {channel} channel took everything: {report}")
        site.wait_for(rf"\[{receiver} pid {pid}\].*lost the {lost} channel to pid \d+: .*; telling the launcher", WAIT, mark)
        # The launcher relaunches the offender, which serves again.
        told = site.wait_for(rf"the {receiver} lost its channel to (evil\.\d) pid (\d+) .*killing that pid", WAIT, mark)
        name, offender = told.group(1), int(told.group(2))
        site.wait_for(rf"{name} pid {offender} crashed \(signal 9, killed because the {receiver} lost its channel", WAIT, mark)
        site.wait_for(rf"{name} pid \d+ is ready", WAIT, mark)
        wait_until(lambda: offender not in {self.evil("whoami")["pid"] for _ in range(4)}, WAIT, f"{name} relaunched and answering")
        grown = vm(pid, "VmHWM") - rss
        self.assertLess(grown, RSS_GROWTH, f"the {receiver} grew by {grown >> 20} MiB at its peak")
        self.assertGreater(report["sent"], 0)
        self.assertTrue(latencies)
        self.assertLess(max(latencies), 1.0, f"/hello took up to {max(latencies):.2f}s during the flood")

    def test_handoff_announced_too_large(self) -> None:
        self.flood("dispatcher", "handoff", "announce", r"handoff:evil\.\d")
        self.wait_misbehaviour("evil", 1)

    def test_handoff_endless_messages(self) -> None:
        self.flood("dispatcher", "handoff", "endless", r"handoff:evil\.\d")
        self.wait_misbehaviour("evil", 100)

    def test_handoff_garbage(self) -> None:
        """Garbage on the handoff channel: dropped at once, the launcher told."""
        self.flood("dispatcher", "handoff", "garbage", r"handoff:evil\.\d")
        self.wait_misbehaviour("evil", 1)

    def test_templates_announced_too_large(self) -> None:
        self.flood("pubd", "templates", "announce", r"templates:evil\.\d")

    def test_templates_endless_messages(self) -> None:
        self.flood("pubd", "templates", "endless", r"templates:evil\.\d")

    def test_control_announced_too_large(self) -> None:
        """The root launcher reads nothing unbounded: a service announcing 10^12 bytes on its control
        channel is cut off at the first datagram, killed and relaunched; the launcher stays flat."""
        site = self.site
        assert site.proc is not None
        launcher = site.proc.pid
        rss = vm(launcher)
        mark = site.mark()
        try:
            self.evil("flood", channel="control", mode="announce", seconds=3)
        except (ConnectionError, OSError, AssertionError):
            pass  # the instance may be gone before it answers
        told = site.wait_for(r"(evil\.\d) pid (\d+) broke the rules of its control channel", WAIT, mark)
        name, offender = told.group(1), int(told.group(2))
        site.wait_for(rf"{name} pid {offender} (crashed|exited)", WAIT, mark)
        site.wait_for(rf"{name} pid \d+ is ready", WAIT, mark)
        wait_until(lambda: offender not in {self.evil("whoami")["pid"] for _ in range(4)}, WAIT, f"{name} relaunched and answering")
        grown = vm(launcher, "VmHWM") - rss
        self.assertLess(grown, RSS_GROWTH, f"the launcher grew by {grown >> 20} MiB at its peak")
        self.assertEqual(site.get("/hello").status, 200)


SLOW_SERVICES = """
[service:slow]
resource = tests.sites.hostile:Hostile
paths = /slow

[service:hello]
resource = services.hello:Hello
paths = /hello
"""

SLOW_CLIENTS = 1000


class SlowBodyTests(WallsTestCase):
    def test_thousand_slow_posts_cost_the_attacker_its_connections(self) -> None:
        """
        1,000 POSTs announcing 1 MB each (past the size that takes a memory file) and
        dripping a byte a second fill one instance to its cap.  The rate floor cuts them
        after body_timeout; the instance answers again within body_timeout + 5 s, without
        a relaunch, a refused connection or a reset channel, and leaves no socket in
        CLOSE_WAIT.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 4 * SLOW_CLIENTS
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        site = self.start(SLOW_SERVICES)
        instance = site.pids()["slow.0"]
        mark = site.mark()
        clients: list[socket.socket] = []
        self.addCleanup(lambda: [c.close() for c in clients])
        head = request_bytes("POST", "/slow/upload", {"Content-Length": "1000000"})
        for _ in range(SLOW_CLIENTS):
            c = site.connect(WAIT)
            c.sendall(head + b"x")
            clients.append(c)
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(1.0):
                for c in clients:
                    try:
                        c.send(b"x", socket.MSG_DONTWAIT)
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip)
        dripper.start()
        self.addCleanup(dripper.join, WAIT)
        self.addCleanup(stop.set)
        # Every slot is taken: the instance holds the 1,000 slow bodies.
        wait_until(lambda: open_fds(instance) > SLOW_CLIENTS, WAIT, "the instance holds the slow connections")
        flooded = time.monotonic()
        r = site.get("/slow/whoami", timeout=BODY_TIMEOUT + 30)
        took = time.monotonic() - flooded
        self.assertEqual(r.status, 200, r)
        self.assertLess(took, BODY_TIMEOUT + 5, f"the service answered {took:.1f}s into the flood")
        # The attacker's connections were answered 408 and closed: read what they got.
        stop.set()
        dripper.join(WAIT)
        statuses: dict[int, int] = {}
        for c in clients[:50]:
            c.settimeout(WAIT)
            got = read_response(c).status
            statuses[got] = statuses.get(got, 0) + 1
        self.assertEqual(statuses, {408: 50})
        for c in clients:
            c.close()
        wait_until(lambda: not close_wait(site.port), WAIT, f"sockets left in CLOSE_WAIT: {close_wait(site.port)[:3]}")
        self.assertEqual(site.pids()["slow.0"], instance, "the instance was relaunched")
        site.drain_log()
        tail = "\n".join(site.lines[mark:])
        self.assertNotIn("refused connection", tail)
        self.assertNotIn("lost the handoff", tail)
        self.assertNotIn("truncated", tail)
        self.assertEqual(site.get("/slow/whoami").status, 200)
