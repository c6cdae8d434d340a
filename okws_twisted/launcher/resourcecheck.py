# -*- test-case-name: tests.test_e2e_core -*-
"""
The launcher's side of the start-up check of every service's ``resource``.

The launcher never imports site code: it runs L{okws_twisted.service.check} in a process of
its own and reads its verdict.  Started by root, it first plans that process's jail here (an
unused uid, a jail like a service's, no network) and hands the plan over with the site
configuration, as it does for every child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from okws_twisted.config import ConfigError, SiteConfig, load
from okws_twisted.launcher.children import child_environment
from okws_twisted.launcher.listeners import check_tls_files

#: Seconds the import of every resource may take.
CHECK_TIMEOUT = 60

_CHECKER = ["-P", "-m", "okws_twisted.service.check"]


def _checker_input(site: SiteConfig) -> str:
    """The site and, as root, the jail the checker enters before importing anything of the site's."""
    jail = None
    if os.geteuid() == 0:
        from okws_twisted.launcher import jailplan

        uid, gid = jailplan.UidPlan(site, jailplan.uids_in_use()).ids_for("resourcecheck")
        binds = [b for service in site.services if service.kind == "service" for b in jailplan.service_binds(site, service)]
        jailplan.prepare_jail_root(site)
        # Importing may start a process only if some service may.
        may_fork = any(service.fork for service in site.services)
        jail = jailplan.jail_for(site, "resourcecheck", uid, gid, binds, new_net=True, may_fork=may_fork).to_json()
    return json.dumps({"site": site.to_json(), "jail": jail})


def check_site(path: str) -> tuple[SiteConfig | None, list[str]]:
    """Every start-up check of the site file at C{path}, starting nothing; the site and the problems.

    The config itself, the TLS listeners' files, then each service's resource
    (in a jailed process of its own, see L{check_resources}).  Used by
    C{twistd okws} before it starts anything and by C{okws-ctl check}.
    Each problem is one line (an import failure: followed by its traceback,
    indented).
    """
    try:
        site = load(path)
    except ConfigError as e:
        return None, [str(e)]
    problems = check_tls_files(site)
    if problems:
        return site, problems
    # The database proxies' checks (issue 13: each queries file parses, each
    # grant names a query that exists) join here when they land.
    return site, check_resources(site)


def summaries(problems: list[str]) -> list[str]:
    """The first line of each problem (without its traceback)."""
    return [p.split("\n", 1)[0] for p in problems]


def check_resources(site: SiteConfig) -> list[str]:
    """Import each service's resource in a separate process; return the problems."""
    try:
        result = subprocess.run(
            [sys.executable, *_CHECKER],
            input=_checker_input(site),
            capture_output=True,
            text=True,
            env=child_environment([site.base_dir]),
            cwd=site.base_dir,
            timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return [f"{site.file}: importing the service resources took over {CHECK_TIMEOUT}s"]
    return _problems_from(site, result.returncode, result.stdout, result.stderr)


def _problems_from(site: SiteConfig, code: int, out: str, err: str) -> list[str]:
    """The checker's problems: a line each, with the indented lines after it (a traceback)."""
    if code == 0:
        return []
    problems: list[str] = []
    for line in out.splitlines():
        if line.startswith("  ") and problems:
            problems[-1] += "\n" + line
        elif line.strip():
            problems.append(line)
    if problems:
        return problems
    tail = err.strip().splitlines()
    last = tail[-1:] or ["no output"]
    trace = "".join("\n  " + line for line in tail[-40:])
    return [f"{site.file}: checking the service resources failed: {last[0]}{trace}"]


def check_resources_async(site: SiteConfig, reactor: Any) -> Any:
    """L{check_resources} without blocking the reactor (for reloads)."""
    from twisted.internet.utils import getProcessOutputAndValue

    d = getProcessOutputAndValue(
        sys.executable,
        _CHECKER,
        env=child_environment([site.base_dir]),
        path=site.base_dir,
        reactor=reactor,
        stdinBytes=_checker_input(site).encode("utf-8"),
    )
    d.addCallback(lambda r: _problems_from(site, r[2], r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace")))
    return d
