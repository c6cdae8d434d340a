# -*- test-case-name: tests.test_e2e_core -*-
"""
``twistd okws``: command-line options and the service twistd runs.

Everything that can be wrong with a site is found here, before twistd starts
anything: the config file, each service's resource (checked in a separate
process, see L{okws_twisted.launcher.resourcecheck}), the services' CSRF
secrets (L{okws_twisted.launcher.secrets}) and the listening sockets.  A
problem prints one line naming the file, section and key, and twistd exits
with status 1.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from okws_twisted.config import SiteConfig
from okws_twisted.launcher.listeners import ListenError, open_listener
from okws_twisted.launcher.resourcecheck import check_site
from okws_twisted.launcher.secrets import SecretError, csrf_secrets
from okws_twisted.launcher.site import Launcher


def _fail(message: str) -> None:
    print(f"okws: {message}", file=sys.stderr)
    raise SystemExit(1)


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
        site, problems = check_site(self["config"])
        if problems:
            for line in problems[:-1]:
                print(f"okws: {line}", file=sys.stderr)
            _fail(problems[-1])
        assert site is not None
        self.site = site
        try:
            csrf_secrets(self.site)
        except SecretError as e:
            _fail(str(e))


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
