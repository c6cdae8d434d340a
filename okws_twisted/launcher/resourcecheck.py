# -*- test-case-name: tests.test_e2e_core -*-
"""
Start-up check of every service's ``resource`` (run in its own process).

The launcher must not execute site code (when started as root it is the one
process that stays root), yet a resource that cannot be imported must stop
the start-up before anything is spawned.  So the launcher runs
``python -m okws_twisted.resourcecheck`` once, feeding it the site
configuration as JSON on stdin; this process imports each resource, checks
that it is a L{ServiceResource} subclass that can be built with no arguments,
prints one line per problem, and exits 1 if there was any.  Started by root,
it first enters a jail like a service's (see L{okws_twisted.jail}) as the
unprivileged uid given as its argument (``UID:GID``).
"""

from __future__ import annotations

import os
import sys
import traceback


def problems(site: "object") -> list[str]:
    """One message per service whose resource is unusable."""
    from okws_twisted.bootstrap import load_resource
    from okws_twisted.config import SiteConfig
    from okws_twisted.resource import ServiceResource

    assert isinstance(site, SiteConfig)
    out = []
    for service in site.services:
        where = f"{site.file}: [service:{service.name}] resource: "
        try:
            obj = load_resource(service.resource, site.base_dir)
        except Exception as e:
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            out.append(f"{where}cannot import {service.resource!r}: {last}")
            continue
        if not (isinstance(obj, type) and issubclass(obj, ServiceResource)):
            out.append(f"{where}{service.resource!r} is not a subclass of okws_twisted.ServiceResource")
    return out


def enter_check_jail(site: "object", uid: int, gid: int) -> None:
    """Import site code as a service will: unprivileged, in a jail that shows only
    Python and the services' packages, with no network."""
    from okws_twisted import jailplan
    from okws_twisted.jail import enter

    binds = [b for service in site.services for b in jailplan.service_binds(site, service)]  # type: ignore[attr-defined]
    jailplan.prepare_jail_root(site)  # type: ignore[arg-type]
    enter(jailplan.jail_for(site, "resourcecheck", uid, gid, binds, new_net=True))  # type: ignore[arg-type]


def main() -> int:
    from okws_twisted.config import SiteConfig

    site = SiteConfig.from_json(sys.stdin.read())
    if len(sys.argv) > 1 and os.geteuid() == 0:
        uid, _, gid = sys.argv[1].partition(":")
        enter_check_jail(site, int(uid), int(gid))
    found = problems(site)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
