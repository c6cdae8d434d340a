"""
Smoke test of the benchmark harness (bench/run.py): it runs, measures both
servers on both workloads, and writes its JSON.

This is not a performance assertion: only that every run served requests
(nonzero throughput) without errors, and that the memory phases reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "bench", "run.py")
TIMEOUT = 300


def run_bench(case: SynchronousTestCase, *flags: str) -> tuple[dict, str, str]:
    """Run C{bench/run.py --quick --duration 1 FLAGS --json OUT}: its JSON, its stdout, and both
    outputs to show on a failure (it must exit 0)."""
    out = os.path.abspath(case.mktemp())
    argv = [sys.executable, RUN, "--quick", "--duration", "1", *flags, "--json", out]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=TIMEOUT)
    stdout = proc.stdout.decode()
    detail = f"\nstdout:\n{stdout}\nstderr:\n{proc.stderr.decode()}"
    case.assertEqual(proc.returncode, 0, detail)
    with open(out) as f:
        return json.load(f), stdout, detail


class WrkTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("wrk") is None:
            raise self.skipTest("wrk is not installed (apt-get install -y wrk); bench/run.py drives its load with wrk")


class BenchHarnessTests(WrkTestCase):
    def test_quick_run(self) -> None:
        """C{bench/run.py --quick} measures okws and twisted.web on both workloads and writes JSON."""
        out = os.path.abspath(self.mktemp())
        argv = [sys.executable, RUN, "--quick", "--duration", "1", "--handoff-growth", "2000", "--json", out]
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the harness stop what it started (its finally/atexit), then make sure.
            proc.terminate()
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                stdout, stderr = proc.communicate()
            self.fail(f"bench/run.py took longer than {TIMEOUT}s\n{stdout.decode()}\n{stderr.decode()}")
        detail = f"\nstdout:\n{stdout.decode()}\nstderr:\n{stderr.decode()}"
        self.assertEqual(proc.returncode, 0, detail)
        with open(out) as f:
            doc = json.load(f)
        # The header says what a hop between two processes costs on this machine.
        self.assertGreater(doc["machine"]["wakeup"]["blocking_us"], 0, detail)
        self.assertRegex(stdout.decode(), r"(?m)^cross-CPU wake-up round trip \(bench/wakeup_rtt\.py\): blocking \d", detail)

        pairings = ("logging on", "logging off")
        self.assertEqual(doc["settings"]["pairings"], list(pairings))
        for pairing in pairings:
            for workload in ("keepalive", "newconn"):
                self.assertIn(workload, doc["results"][pairing], detail)
                for server in ("okws", "twisted.web"):
                    result = doc["results"][pairing][workload][server]
                    self.assertGreater(result["rps"], 0, f"{pairing}/{workload}/{server}{detail}")
                    self.assertEqual(result["errors"], 0, f"{pairing}/{workload}/{server}: {result['error_kinds']}{detail}")
                self.assertGreater(doc["results"][pairing][workload]["ratio"], 0, detail)
        runs = {(r["pairing"], r["workload"], r["server"]) for r in doc["runs"]}
        self.assertEqual(
            runs, {(p, w, s) for p in pairings for w in ("keepalive", "newconn") for s in ("okws", "twisted.web")}
        )
        # The log daemon's CPU counts in okws's CPU per request; each process's share is reported.
        for run in doc["runs"]:
            if run["server"] == "okws":
                self.assertIn("logd", run["cpu_seconds"], detail)
                for process in ("dispatcher", "hello.0", "logd"):
                    self.assertIn(process, run["cpu_us_per_request_by_process"], detail)
        # Issue 14's honest pairing, from the same runs: okws with its log against the peer without.
        honest = doc["results"]["okws log vs no log"]
        for workload in ("keepalive", "newconn"):
            self.assertEqual(honest[workload]["okws"], doc["results"]["logging on"][workload]["okws"], detail)
            self.assertEqual(honest[workload]["twisted.web"], doc["results"]["logging off"][workload]["twisted.web"], detail)
            self.assertGreater(honest[workload]["ratio"], 0, detail)
        self.assertIn("okws log vs no log: ratio okws/twisted.web", stdout.decode())
        self.assertIn("CPU per request during keepalive, logging off: okws", stdout.decode())

        memory = doc["memory_kib"]
        for process in ("launcher", "dispatcher", "hello.0", "logd", "nolog:hello.0"):
            self.assertGreater(memory[process]["start"]["VmRSS"], 0, process)
            self.assertGreater(memory[process]["after runs"]["VmRSS"], 0, process)

        handoff = doc["handoff_growth"]
        self.assertEqual(handoff["requested"], 2000)
        self.assertGreaterEqual(handoff["completed"], 2000, detail)
        self.assertEqual(handoff["error_count"], 0, detail)
        self.assertGreater(handoff["rss_kib_after"]["dispatcher"]["VmRSS"], 0)

        self.assertIn("ratio okws/twisted.web", stdout.decode())
        # Nothing it started is left running.
        for pairing in pairings:
            for pid in doc["processes"][pairing]["okws"].values():
                self.assertFalse(_alive(pid, b"okws"), f"okws process {pid} outlived the harness")
            for pid in doc["processes"][pairing]["twisted.web"].values():
                self.assertFalse(_alive(pid, b"peer_twistedweb"), f"twisted.web process {pid} outlived the harness")

    def test_quick_tls_run(self) -> None:
        """C{bench/run.py --tls}: okws behind its TLS front and twisted.web terminating TLS, over https."""
        doc, _stdout, detail = run_bench(self, "--tls", "--logging", "off", "--handoff-growth", "0")
        self.assertTrue(doc["settings"]["tls"])
        for server in ("okws", "twisted.web"):
            self.assertTrue(doc["urls"]["logging off"][server].startswith("https://127.0.0.1:"), detail)
            for workload in ("keepalive", "newconn"):
                result = doc["results"]["logging off"][workload][server]
                self.assertGreater(result["rps"], 0, f"{workload}/{server}{detail}")
                self.assertEqual(result["errors"], 0, f"{workload}/{server}: {result['error_kinds']}{detail}")
        self.assertIn("tls", doc["processes"]["logging off"]["okws"])

    def test_quick_isolation_run(self) -> None:
        """C{bench/run.py --isolation request}: the relaying site measured beside connection mode and twisted.web."""
        doc, stdout, detail = run_bench(
            self, "--isolation", "request", "--logging", "off", "--handoff-growth", "0", "--repeat", "3"
        )
        self.assertEqual(doc["settings"]["isolation"], "request")
        for workload in ("keepalive", "newconn"):
            result = doc["results"]["logging off"][workload]
            relayed = result["okws-request"]
            self.assertGreater(relayed["rps"], 0, f"{workload}{detail}")
            self.assertEqual(relayed["errors"], 0, f"{workload}: {relayed['error_kinds']}{detail}")
            iso = result["isolation"]
            self.assertGreater(iso["vs_connection"], 0, detail)
            # The judged p99 difference is the median of the three repeats' own differences.
            runs = [r for r in doc["runs"] if r["workload"] == workload and r["pairing"] == "logging off"]
            deltas = [
                next(r["p99_ms"] for r in runs if r["server"] == "okws-request" and r["repeat"] == k)
                - next(r["p99_ms"] for r in runs if r["server"] == "okws" and r["repeat"] == k)
                for k in range(3)
            ]
            self.assertEqual(iso["p99_delta_per_repeat_ms"], [round(d, 3) for d in deltas], detail)
            self.assertAlmostEqual(iso["p99_delta_ms"], sorted(deltas)[1], places=2, msg=detail)
        rows = {t["name"]: t for t in doc["targets"] if "isolation" in t["name"] and "p99" in t["name"]}
        self.assertEqual(len(rows), 2, rows)
        for name, row in rows.items():
            self.assertEqual(row["target"] == "(reported)", name.startswith("new-connection"), row)
        self.assertIn("isolation = request is", stdout)
        self.assertIn("median of the repeats' differences", stdout)
        # A row reported without a target says neither PASS nor MISS.
        reported = [line for line in stdout.splitlines() if "target (reported)" in line]
        self.assertEqual(len(reported), 2, stdout)
        for line in reported:
            self.assertNotIn("PASS", line)
        for pid in doc["processes"]["logging off"]["okws-request"].values():
            self.assertFalse(_alive(pid, b"okws"), f"okws process {pid} outlived the harness")


class StaticBenchTests(WrkTestCase):
    def test_quick_static_run(self) -> None:
        """C{bench/run.py --static}: a static pool, static.File and nginx on the same files, every workload."""
        doc, stdout, detail = run_bench(self, "--static")
        self.assertTrue(doc["settings"]["static"])
        servers = ("okws", "twisted.web", "nginx") if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx") else ("okws", "twisted.web")
        results = doc["results"]["logging on"]
        self.assertEqual(sorted(results), ["1m-keepalive", "1m-newconn", "4k-keepalive", "4k-newconn"])
        for workload, entry in results.items():
            for server in servers:
                self.assertGreater(entry[server]["rps"], 0, f"{workload}/{server}{detail}")
                self.assertEqual(entry[server]["errors"], 0, f"{workload}/{server}{detail}")
        self.assertIsNotNone(results["4k-keepalive"]["pass"])
        self.assertIn("okws/twisted.web", stdout)
        for name, pids in doc["processes"]["logging on"].items():
            for pid in pids.values():
                self.assertFalse(_alive(pid, b"okws" if name == "okws" else (b"peer_twistedweb" if name == "twisted.web" else b"nginx")),
                                 f"{name} process {pid} outlived the harness")


class DatabaseBenchTests(WrkTestCase):
    def test_db_run(self) -> None:
        """C{bench/run.py --db --quick}: the database page through okws's proxy and through adbapi in the peer."""
        doc, stdout, _detail = run_bench(self, "--db")
        servers = {run["server"] for run in doc["runs"]}
        self.assertEqual(servers, {"okws", "twisted.web"})
        for run in doc["runs"]:
            self.assertGreater(run["requests"], 0, run)
            self.assertEqual(sum(run["errors"].values()), 0, run)
        self.assertEqual(doc["round_trips"]["n"], 500)
        self.assertGreater(doc["memory_kib"]["idle proxy at start"], 0)
        from tests.pgcluster import PostgresCluster

        if PostgresCluster.available():  # the PostgreSQL proxy's idle memory, reported beside the targets
            self.assertGreater(doc["memory_kib"]["idle PostgreSQL proxy at start"], 0)
            self.assertIn("also measured", stdout)
        self.assertEqual(len(doc["targets"]), 4)
        self.assertEqual(len(doc["also_measured"]), 1 if PostgresCluster.available() else 0)
        self.assertIn("proxy round trip p50", stdout)


def _alive(pid: int, marker: bytes) -> bool:
    """True if C{pid} runs and its command line contains C{marker} (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker in f.read()
    except FileNotFoundError:
        return False


class NewConnectionCPUTests(SynchronousTestCase):
    """C{bench/newconn_cpu.py} (in process, no wrk): each side serves real connections and reports a figure."""

    def test_every_side_runs(self) -> None:
        script = os.path.join(REPO, "bench", "newconn_cpu.py")
        for flags, what in (
            (["--instance", "--log"], "okws instance (access log)"),
            (["--dispatcher"], "okws dispatcher"),
            (["--peer", "--batch", "4"], "twisted.web Site"),
        ):
            proc = subprocess.run(
                [sys.executable, script, *flags, "--n", "40"], cwd=REPO, capture_output=True, timeout=TIMEOUT
            )
            detail = f"\nstdout:\n{proc.stdout.decode()}\nstderr:\n{proc.stderr.decode()}"
            self.assertEqual(proc.returncode, 0, detail)
            self.assertRegex(proc.stdout.decode(), rf"^{re.escape(what)}: \d+\.\d us CPU per new connection", detail)


class IdleRssTests(SynchronousTestCase):
    """C{bench/idle_rss.py}: starts the bench's site, reads the instance's VmRSS, stops it."""

    def test_runs(self) -> None:
        script = os.path.join(REPO, "bench", "idle_rss.py")
        proc = subprocess.run([sys.executable, script, "--requests", "3"], cwd=REPO, capture_output=True, timeout=TIMEOUT)
        detail = f"\nstdout:\n{proc.stdout.decode()}\nstderr:\n{proc.stderr.decode()}"
        self.assertEqual(proc.returncode, 0, detail)
        self.assertRegex(proc.stdout.decode(), r"^hello\.0 VmRSS: \d+\.\d MiB at start, \d+\.\d MiB after 3 requests", detail)


class InProcessToolTests(SynchronousTestCase):
    """The in-process CPU tools of bench/ (no wrk) run against this tree and print their figure.

    They are how changes on the request path are judged between quiet runs; one that no longer
    runs (an import of something since removed) goes unnoticed until it is needed.
    """

    TOOLS = (
        (["relay_cpu.py", "--n", "100"], r"^okws dispatcher relay: \d+\.\d us CPU per keep-alive request"),
        (["relay_cpu.py", "--instance", "--n", "100"], r"^okws instance: \d+\.\d us CPU per keep-alive request over relay pairs"),
        (["relay_cpu.py", "--instance", "--tcp", "--n", "100"], r"^okws instance: \d+\.\d us CPU per keep-alive request over TCP"),
        (["log_cpu.py"], r"^instance \(access log\): \d+\.\d us CPU per keep-alive request; log daemon: \d+\.\d+ us per record"),
        (["instance_cpu.py"], r"^okws instance: \d+\.\d us CPU per keep-alive request"),
        (["instance_cpu.py", "--peer"], r"^twisted\.web Site: \d+\.\d us CPU per keep-alive request"),
        (["access_record.py"], r"^access record: \d+\.\d+ us \(ServiceSite\.log \+ emit"),
        (["db_client_cpu.py"], r"us per call .*client \d+\.\d+, all \d+\.\d+"),
        (["wakeup_rtt.py", "--n", "200"], r"^cross-CPU wake-up round trip: blocking \d+\.\d us"),
    )

    def test_each_tool_runs(self) -> None:
        for argv, pattern in self.TOOLS:
            script = os.path.join(REPO, "bench", argv[0])
            proc = subprocess.run([sys.executable, script, *argv[1:]], cwd=REPO, capture_output=True, timeout=TIMEOUT)
            detail = f"{' '.join(argv)}\nstdout:\n{proc.stdout.decode()}\nstderr:\n{proc.stderr.decode()}"
            self.assertEqual(proc.returncode, 0, detail)
            self.assertRegex(proc.stdout.decode(), re.compile(pattern, re.M), detail)
