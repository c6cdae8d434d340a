# -*- test-case-name: tests.test_e2e_core -*-
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


def _checker_args(site: SiteConfig) -> list[str]:
    """The checker's arguments: as root, an unused uid to import site code as."""
    if os.geteuid() != 0:
        return ["-P", "-m", "okws_twisted.resourcecheck"]
    from okws_twisted.jailplan import UidPlan, uids_in_use

    uid, gid = UidPlan(site, uids_in_use()).ids_for("resourcecheck")
    return ["-P", "-m", "okws_twisted.resourcecheck", f"{uid}:{gid}"]


def check_resources(site: SiteConfig) -> list[str]:
    """Import each service's resource in a separate process; return the problems."""
    try:
        result = subprocess.run(
            [sys.executable, *_checker_args(site)],
            input=site.to_json(),
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
    if code == 0:
        return []
    lines = [line for line in out.splitlines() if line.strip()]
    last = err.strip().splitlines()[-1:] or ["no output"]
    return lines or [f"{site.file}: checking the service resources failed: {last[0]}"]


def check_resources_async(site: SiteConfig, reactor: Any) -> Any:
    """L{check_resources} without blocking the reactor (for reloads)."""
    from twisted.internet.utils import getProcessOutputAndValue

    d = getProcessOutputAndValue(
        sys.executable,
        _checker_args(site),
        env=child_environment([site.base_dir]),
        path=site.base_dir,
        reactor=reactor,
        stdinBytes=site.to_json().encode("utf-8"),
    )
    d.addCallback(lambda r: _problems_from(site, r[2], r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace")))
    return d


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
        missing = check_tls_files(self.site)
        if missing:
            _fail(missing[0])
        found = check_resources(self.site)
        if found:
            for line in found[:-1]:
                print(f"okws: {line}", file=sys.stderr)
            _fail(found[-1])


def sni_pem_files(directory: str) -> list[str]:
    """The C{.pem} regular files of a C{tls:} listener's directory (names only are looked at here)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith(".pem") and os.path.isfile(os.path.join(directory, n))]


def check_tls_files(site: SiteConfig) -> list[str]:
    """The ssl: listeners' key and certificate files that are not regular files, as config errors.

    Only their existence is checked here: the launcher never reads a key.
    The TLS front loads them, and reports a file that does not parse.
    """
    problems = []
    for listener in site.listen:
        for option, path in (("privateKey", listener.private_key), ("certKey", listener.cert_key)):
            if path is not None and not os.path.isfile(path):
                problems.append(
                    f"{site.file}: [okws] listen: {listener.description!r}: {option} {path} "
                    + ("is not a file" if os.path.exists(path) else "does not exist")
                )
        if listener.sni_dir is not None:
            where = f"{site.file}: [okws] listen: {listener.description!r}: path {listener.sni_dir}"
            if not os.path.isdir(listener.sni_dir):
                problems.append(where + (" is not a directory" if os.path.exists(listener.sni_dir) else " does not exist"))
            elif not sni_pem_files(listener.sni_dir):
                problems.append(where + " holds no .pem file (each NAME.pem holds a key and its certificate chain)")
    return problems


def _refuse_if_running(site: SiteConfig) -> None:
    """Another launcher answering on our control socket means this site already runs."""
    import socket as _socket

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(site.control_socket)
    except OSError:
        return
    finally:
        probe.close()
    _fail(f"{site.file}: [okws] control_socket: another okws is already running on {site.control_socket}")


def makeService(options: Options) -> Launcher:
    site = options.site
    _refuse_if_running(site)
    sockets = []
    try:
        for listener in site.listen:
            sockets.append(open_listener(listener))
    except ListenError as e:
        for sock in sockets:
            sock.close()
        _fail(f"{site.file}: [okws] listen: {e}")
    admin = None
    if site.admin is not None:
        try:
            admin = open_listener(site.admin)
        except ListenError as e:
            for sock in sockets:
                sock.close()
            _fail(f"{site.file}: [okws] admin: {e}")
    return Launcher(site, sockets, admin_socket=admin)
