"""
The import walls of DESIGN.md "Who may import whom", checked in fresh interpreters.

Importing a module in a new process and listing ``sys.modules`` shows what a
process of that role really loads, not what we believe it does.
"""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import REPO


def modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return set(json.loads(out.stdout))


class ImportWallTests(SynchronousTestCase):
    def test_dispatcher_runs_no_site_code(self) -> None:
        loaded = modules_after_import("okws_twisted.dispatcher")
        for forbidden in ("okws_twisted.resource", "okws_twisted.testing", "okws_twisted.runtime", "jinja2", "services"):
            self.assertNotIn(forbidden, loaded)

    def test_tls_front_runs_no_site_code(self) -> None:
        """The process holding the private keys runs nothing site authors wrote, and no web code."""
        loaded = modules_after_import("okws_twisted.tlsfront")
        for forbidden in (
            "okws_twisted.resource", "okws_twisted.testing", "okws_twisted.runtime", "okws_twisted.dispatcher",
            "okws_twisted.rendering", "twisted.web", "jinja2", "services",
        ):
            self.assertNotIn(forbidden, loaded)

    def test_dispatcher_renders_no_templates(self) -> None:
        """The dispatcher shows the publisher's error pages; it never renders one."""
        loaded = modules_after_import("okws_twisted.dispatcher")
        for forbidden in ("okws_twisted.rendering", "okws_twisted.templateclient", "okws_twisted.publisher", "markupsafe"):
            self.assertNotIn(forbidden, loaded)

    def test_publisher_runs_no_site_code(self) -> None:
        """The template publisher reads templates; it never imports services or serves requests."""
        loaded = modules_after_import("okws_twisted.publisher")
        for forbidden in (
            "okws_twisted.resource", "okws_twisted.runtime", "okws_twisted.dispatcher",
            "okws_twisted.launcher", "okws_twisted.templateclient", "twisted.web.server", "services",
        ):
            self.assertNotIn(forbidden, loaded)

    def test_services_preload_what_jinja2_loads_late(self) -> None:
        """A jailed service cannot import later: what jinja2 imports lazily is loaded up front."""
        loaded = modules_after_import("okws_twisted.runtime")
        for needed in ("jinja2.debug", "encodings.unicode_escape"):
            self.assertIn(needed, loaded)

    def test_launcher_runs_no_site_code(self) -> None:
        loaded = modules_after_import("okws_twisted.tap")
        for forbidden in ("okws_twisted.resource", "okws_twisted.runtime", "okws_twisted.dispatcher", "jinja2", "services"):
            self.assertNotIn(forbidden, loaded)

    def test_log_daemon_runs_no_site_code_and_no_web(self) -> None:
        loaded = modules_after_import("okws_twisted.logdaemon")
        for forbidden in (
            "okws_twisted.resource", "okws_twisted.runtime", "okws_twisted.dispatcher", "okws_twisted.launcher",
            "okws_twisted.transport", "twisted.web", "jinja2", "services",
        ):
            self.assertNotIn(forbidden, loaded)

    def test_log_formatting_is_pure(self) -> None:
        """The record checks and line formats need no Twisted and no I/O (DESIGN.md: pure logic apart)."""
        for module in ("okws_twisted.logformat", "okws_twisted.config", "okws_twisted.proxyproto"):
            loaded = modules_after_import(module)
            self.assertEqual({name for name in loaded if name.split(".")[0] in ("twisted", "zope")}, set(), module)

    def test_author_api_is_one_process(self) -> None:
        for module in ("okws_twisted.resource", "okws_twisted.testing"):
            loaded = modules_after_import(module)
            for forbidden in (
                "okws_twisted.launcher", "okws_twisted.dispatcher", "okws_twisted.tap",
                "okws_twisted.publisher", "okws_twisted.templateclient", "okws_twisted.templatechannel",
            ):
                self.assertNotIn(forbidden, loaded, module)

    def test_public_api(self) -> None:
        import okws_twisted

        self.assertEqual(sorted(okws_twisted.__all__), ["ServiceResource", "__version__"])
        from okws_twisted.resource import ServiceResource

        self.assertIs(okws_twisted.ServiceResource, ServiceResource)
        with self.assertRaises(AttributeError):
            okws_twisted.NoSuchThing  # noqa: B018
