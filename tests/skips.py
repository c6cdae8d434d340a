"""
CI cannot pass by skipping: the filter the README's test command pipes trial's output through.

It copies trial's output through unchanged, then reads trial's summary and exits 1 unless trial
passed and every skipped test is in L{ALLOWED} with its allowed reason.  A test that skips because
a tool is missing, or because the run is not root, fails the run: install the tool (``.ci/run``
does), run as root.

    .venv/bin/python -u -m twisted.trial tests 2>&1 | .venv/bin/python tests/skips.py
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import BinaryIO, Iterable, TextIO

#: The skips a CI run may have: test id -> the start of the only reason allowed.  Keep it short;
#: each entry says why the skip cannot be helped on a CI machine.
ALLOWED: dict[str, str] = {
    # Needs a free port below 1024 on 127.0.0.1: that depends on what else the machine runs
    # (and another run of this suite may hold one), not on okws.
    "tests.test_e2e_jail.OwnershipTests.test_privileged_port_with_an_unprivileged_dispatcher": "no free port below 1024",
}

_SEPARATOR = re.compile(r"^(=|-){70,}$")
_TEST_ID = re.compile(r"^[A-Za-z_][\w.]*$")
_VERDICT = re.compile(r"^(PASSED|FAILED) \((.*)\)$")


@dataclass(frozen=True)
class Summary:
    """What trial's summary says: the verdict line, its skip count, and each skipped test with its reason."""

    verdict: str | None
    skip_count: int
    skipped: tuple[tuple[str, str], ...]


def read_summary(lines: Iterable[str]) -> Summary:
    """Read trial's (verbose or tree reporter) summary from its output lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    verdict = None
    for line in (l.rstrip("\r\n") for l in lines):
        if _SEPARATOR.match(line):
            current = []
            blocks.append(current)
        elif current is not None:
            current.append(line)
        m = _VERDICT.match(line)
        if m:
            verdict = line
    skipped: list[tuple[str, str]] = []
    for block in blocks:
        if not block or block[0] != "[SKIPPED]":
            continue
        body = block[1:]
        while body and not body[-1].strip():
            body.pop()
        ids: list[str] = []
        while body and _TEST_ID.match(body[-1]):
            ids.insert(0, body.pop())
        reason = "\n".join(body).strip()
        skipped += [(test_id, reason) for test_id in ids]
    count = 0
    if verdict is not None:
        m = re.search(r"\bskips=(\d+)", verdict)
        count = int(m.group(1)) if m else 0
    return Summary(verdict, count, tuple(skipped))


def problems(summary: Summary, allowed: dict[str, str] = ALLOWED) -> list[str]:
    """Why this run must fail (nothing: it passes)."""
    out = []
    if summary.verdict is None:
        out.append("trial printed no summary (it crashed, or its output was cut)")
    elif not summary.verdict.startswith("PASSED"):
        out.append(f"trial: {summary.verdict}")
    if len(summary.skipped) != summary.skip_count:
        out.append(f"trial counted {summary.skip_count} skips; {len(summary.skipped)} could be read from its summary")
    for test_id, reason in summary.skipped:
        want = allowed.get(test_id)
        if want is None or not reason.startswith(want):
            out.append(f"skipped, and not allowed to be: {test_id}: {reason}")
    return out


def main(stdin: BinaryIO, stdout: TextIO) -> int:
    lines = []
    for raw in stdin:
        line = raw.decode("utf-8", "replace")
        stdout.write(line)
        stdout.flush()
        lines.append(line)
    summary = read_summary(lines)
    found = problems(summary)
    for problem in found:
        print(f"tests/skips.py: {problem}", file=stdout)
    if found:
        print("tests/skips.py: FAILED (a CI run may skip only what ALLOWED in tests/skips.py lists)", file=stdout)
        return 1
    print(f"tests/skips.py: PASSED ({len(summary.skipped)} skipped, each allowed)", file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.stdin.buffer, sys.stdout))
