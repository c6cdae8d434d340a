"""
Tests for L{tests.skips}, the filter that fails a CI run on a skip it does not allow, and for the
one test command README.md and .ci/run share.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import REPO
from tests.skips import Summary, problems, read_summary

SEP = "=" * 79
END = "-" * 79

OUTPUT = f"""\
skipdemo.test_a
  A
    test_one ...                                                      [SKIPPED]
{SEP}
[SKIPPED]
class-level reason

skipdemo.test_a.A.test_one
skipdemo.test_a.A.test_two
{SEP}
[SKIPPED]
no curl
second line

skipdemo.test_a.B.test_raise
{SEP}
[FAIL]
Traceback (most recent call last):
twisted.trial.unittest.FailTest: boom

skipdemo.test_a.B.test_fail
{END}
Ran 6 tests in 0.006s

FAILED (skips=3, failures=1, successes=2)
"""


class ReadSummaryTests(SynchronousTestCase):
    def test_skipsAndVerdict(self) -> None:
        summary = read_summary(OUTPUT.splitlines(keepends=True))
        self.assertEqual(summary.verdict, "FAILED (skips=3, failures=1, successes=2)")
        self.assertEqual(summary.skip_count, 3)
        self.assertEqual(
            summary.skipped,
            (("skipdemo.test_a.A.test_one", "class-level reason"),
             ("skipdemo.test_a.A.test_two", "class-level reason"),
             ("skipdemo.test_a.B.test_raise", "no curl\nsecond line")),
        )

    def test_noSummary(self) -> None:
        self.assertEqual(read_summary(["Traceback (most recent call last):\n"]), Summary(None, 0, ()))


class ProblemsTests(SynchronousTestCase):
    ALLOWED = {"t.A.test_port": "no free port"}

    def test_passedWithNoSkip(self) -> None:
        self.assertEqual(problems(Summary("PASSED (successes=3)", 0, ()), self.ALLOWED), [])

    def test_allowedSkip(self) -> None:
        summary = Summary("PASSED (skips=1, successes=3)", 1, (("t.A.test_port", "no free port below 1024"),))
        self.assertEqual(problems(summary, self.ALLOWED), [])

    def test_allowedTestSkippedForAnotherReason(self) -> None:
        summary = Summary("PASSED (skips=1, successes=3)", 1, (("t.A.test_port", "needs root"),))
        self.assertEqual(problems(summary, self.ALLOWED), ["skipped, and not allowed to be: t.A.test_port: needs root"])

    def test_otherSkip(self) -> None:
        summary = Summary("PASSED (skips=1, successes=3)", 1, (("t.A.test_x", "wrk is not installed"),))
        self.assertEqual(problems(summary, self.ALLOWED), ["skipped, and not allowed to be: t.A.test_x: wrk is not installed"])

    def test_failed(self) -> None:
        self.assertEqual(problems(Summary("FAILED (failures=1)", 0, ()), self.ALLOWED), ["trial: FAILED (failures=1)"])

    def test_noSummary(self) -> None:
        self.assertEqual(problems(Summary(None, 0, ()), self.ALLOWED), ["trial printed no summary (it crashed, or its output was cut)"])

    def test_skipsNotAllRead(self) -> None:
        summary = Summary("PASSED (skips=2, successes=3)", 2, (("t.A.test_port", "no free port"),))
        self.assertEqual(problems(summary, self.ALLOWED), ["trial counted 2 skips; 1 could be read from its summary"])


class PipelineTests(SynchronousTestCase):
    """Real trial runs piped through the filter, as CI runs the suite."""

    def run_suite(self, body: str) -> tuple[int, str]:
        d = tempfile.mkdtemp(prefix="okws-skips-")
        self.addCleanup(shutil.rmtree, d, True)
        package = os.path.join(d, "skipdemo")
        os.mkdir(package)
        open(os.path.join(package, "__init__.py"), "w").close()
        with open(os.path.join(package, "test_demo.py"), "w") as f:
            f.write("from twisted.trial.unittest import SynchronousTestCase\n\n" + textwrap.dedent(body))
        trial = subprocess.Popen([sys.executable, "-m", "twisted.trial", "skipdemo"], cwd=d,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "skips.py")], stdin=trial.stdout,
                                  capture_output=True, text=True, timeout=120)
        finally:
            assert trial.stdout is not None
            trial.stdout.close()
            trial.wait(120)
        return done.returncode, done.stdout

    def test_cleanRunPasses(self) -> None:
        code, out = self.run_suite("class T(SynchronousTestCase):\n    def test_ok(self): pass\n")
        self.assertEqual(code, 0, out)
        self.assertIn("test_ok ...", out)  # trial's output is passed through
        self.assertTrue(out.endswith("tests/skips.py: PASSED (0 skipped, each allowed)\n"), out)

    def test_skipFailsTheRun(self) -> None:
        code, out = self.run_suite("class T(SynchronousTestCase):\n    def test_ok(self): self.skipTest('curl is not installed')\n")
        self.assertEqual(code, 1, out)
        self.assertIn("tests/skips.py: skipped, and not allowed to be: skipdemo.test_demo.T.test_ok: curl is not installed\n", out)

    def test_failureFailsTheRun(self) -> None:
        code, out = self.run_suite("class T(SynchronousTestCase):\n    def test_ok(self): self.fail('no')\n")
        self.assertEqual(code, 1, out)
        self.assertIn("tests/skips.py: trial: FAILED (failures=1)\n", out)


class TestCommandTests(SynchronousTestCase):
    def test_ciRunsTheReadmeCommand(self) -> None:
        """.ci/run runs exactly the README's test command."""
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        block = readme.split("Run the whole test suite", 1)[1]
        command = re.search(r"```sh\n(.*?)\n```", block, re.S).group(1).strip()
        with open(os.path.join(REPO, ".ci", "run")) as f:
            ci = f.read()
        self.assertIn("tests/skips.py", command)
        self.assertEqual(ci.rstrip("\n").splitlines()[-1], command)

    def test_ciRefusesToRunAsAnOrdinaryUser(self) -> None:
        """.ci/run stops at once, saying why, unless it is root (the security tests need root)."""
        d = tempfile.mkdtemp(prefix="okws-ci-")
        self.addCleanup(shutil.rmtree, d, True)
        os.mkdir(os.path.join(d, ".ci"))
        shutil.copy(os.path.join(REPO, ".ci", "run"), os.path.join(d, ".ci", "run"))
        # Only what the check needs is on PATH: were the check gone, the script would stop at its
        # first other command (no apt-get, no python3) instead of installing anything.
        bin_dir = os.path.join(d, "bin")
        os.mkdir(bin_dir)
        for tool in ("id", "dirname"):
            os.symlink(shutil.which(tool), os.path.join(bin_dir, tool))
        os.chmod(d, 0o755)
        prefix: list[str] = []
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            self.assertIsNotNone(setpriv, "setpriv (util-linux) is needed to run .ci/run as an ordinary user")
            prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        done = subprocess.run([*prefix, shutil.which("bash"), os.path.join(d, ".ci", "run")], capture_output=True,
                              text=True, timeout=60, env={"PATH": bin_dir})
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertTrue(done.stderr.startswith(".ci/run: run it as root: the jail and privilege tests need root"), done.stderr)
