# -*- test-case-name: tests.test_tap -*-
"""
Start-up check of every service's ``resource`` (run in its own process).

The launcher must not execute site code (when started as root it is the one
process that stays root), yet a resource that cannot be imported must stop
the start-up before anything is spawned.  So the launcher runs
``python -m okws_twisted.resourcecheck`` once, feeding it the site
configuration as JSON on stdin; this process imports each resource, checks
that it is a L{ServiceResource} subclass that can be built with no arguments,
prints one line per problem, and exits 1 if there was any.
"""

from __future__ import annotations

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


def main() -> int:
    from okws_twisted.config import SiteConfig

    site = SiteConfig.from_json(sys.stdin.read())
    found = problems(site)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
