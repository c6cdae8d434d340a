# -*- test-case-name: tests.test_e2e_core -*-
"""
The start-up check of every service's ``resource``, run as a process of its own.

The launcher must not execute site code (when started as root it is the one process that
stays root), yet a resource that cannot be imported must stop the start-up before anything
is spawned.  So the launcher (L{okws_twisted.launcher.resourcecheck}) runs
``python -P -m okws_twisted.service.check`` once, feeding it on stdin a JSON object with the
site configuration and, when started by root, the jail to enter first (planned by the
launcher, like a service's: an unused uid, Python and the services' packages, no network).
This process imports each resource, checks that it is a L{ServiceResource} subclass,
prints one line per problem (for an import failure: the file and line, then the traceback
on lines indented by two spaces), and exits 1 if there was any.
"""

from __future__ import annotations

import json
import os
import sys

from okws_twisted.config import SiteConfig


def problems(site: SiteConfig) -> list[str]:
    """One message per service whose resource is unusable."""
    from okws_twisted.bootstrap import describe_failure, load_resource, site_traceback
    from okws_twisted.service.resource import ServiceResource

    out = []
    for service in site.services:
        if service.kind != "service":
            continue  # a static pool's resource is okws's own
        where = f"{site.file}: [service:{service.name}] resource: "
        try:
            obj = load_resource(service.resource, site.base_dir)
        except Exception as e:
            # The place first (file:line), then the traceback below it, indented.
            trace = site_traceback(e, site.base_dir).rstrip("\n")
            indented = "".join("  " + line + "\n" for line in trace.split("\n")) if trace else ""
            out.append(f"{where}cannot import {service.resource!r}: {describe_failure(e, site.base_dir)}\n{indented}".rstrip("\n"))
            continue
        if not (isinstance(obj, type) and issubclass(obj, ServiceResource)):
            out.append(f"{where}{service.resource!r} is not a subclass of okws_twisted.ServiceResource")
    return out


def main() -> int:
    from okws_twisted.bootstrap import CHILD_UMASK

    os.umask(CHILD_UMASK)
    document = json.loads(sys.stdin.read())
    site = SiteConfig.from_json(document["site"])
    if document.get("jail") is not None:
        from okws_twisted.jail import JailSpec, enter

        enter(JailSpec.from_json(document["jail"]))
    found = problems(site)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
