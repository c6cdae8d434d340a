# -*- test-case-name: tests.test_tap -*-
"""
``twistd okws``: command-line options and the service twistd runs.

Everything that can be wrong with a site is found here, before twistd starts
anything: the config file, each service's resource (checked in a separate
process, see L{okws_twisted.resourcecheck}) and the listening sockets.  A
problem prints one line naming the file, section and key, and twistd exits
with status 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.python import usage

from okws_twisted.config import ConfigError, SiteConfig, load
from okws_twisted.launcher import Launcher, ListenError, child_environment, open_listener

CHECK_TIMEOUT = 60


def _fail(message: str) -> None:
    print(f"okws: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_resources(site: SiteConfig) -> list[str]:
    """Import each service's resource in a separate process; return the problems."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "okws_twisted.resourcecheck"],
            input=site.to_json(),
            capture_output=True,
            text=True,
            env=child_environment([site.base_dir]),
            cwd=site.base_dir,
            timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return [f"{site.file}: importing the service resources took over {CHECK_TIMEOUT}s"]
    if result.returncode == 0:
        return []
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        lines = [f"{site.file}: checking the service resources failed: {result.stderr.strip()[-500:]}"]
    return lines


class Options(usage.Options):
    """Options for ``twistd okws``."""

    synopsis = "[twistd options] okws --config site.ini"
    longdesc = (
        "Serve an okws site: a launcher that spawns a dispatcher and one process per "
        "web service instance, as described by the site's ini file. See docs/configuration.md."
    )
    optParameters = [
        ["config", "c", "site.ini", "The site's ini file."],
    ]

    site: SiteConfig

    def postOptions(self) -> None:
        try:
            self.site = load(self["config"])
        except ConfigError as e:
            _fail(str(e))
        found = check_resources(self.site)
        if found:
            for line in found[:-1]:
                print(f"okws: {line}", file=sys.stderr)
            _fail(found[-1])


def makeService(options: Options) -> Launcher:
    site = options.site
    sockets = []
    try:
        for listener in site.listen:
            sockets.append(open_listener(listener))
    except ListenError as e:
        for sock in sockets:
            sock.close()
        _fail(f"{site.file}: [okws] listen: {e}")
    return Launcher(site, sockets)
