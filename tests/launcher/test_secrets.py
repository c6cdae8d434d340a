"""
Tests for L{okws_twisted.launcher.secrets} (the services' CSRF secrets in C{state_dir}) and for
where they go: each service's own start-up message, never another's, never the site
configuration every child gets, never a static pool.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ServiceConfig, SiteConfig
from okws_twisted.config.site import STATIC_RESOURCE
from okws_twisted.launcher.secrets import SECRET_BYTES, SecretError, csrf_secrets
from okws_twisted.launcher.site import Launcher
from okws_twisted.wire import control, limits
from okws_twisted.wire.channel import read_one_blocking
from tests.launcher.test_site import Reactor


def site(state_dir: str, root: str = "/srv/static") -> SiteConfig:
    return SiteConfig(
        file="site.ini", base_dir="/srv", log_dir="/srv/logs", templates="/srv/templates", state_dir=state_dir,
        services=(
            ServiceConfig(name="hello", resource="a:B", paths=("/hello",)),
            ServiceConfig(name="form", resource="a:C", paths=("/form",)),
            ServiceConfig(name="assets", resource=STATIC_RESOURCE, paths=("/static",), kind="static", root=root, max_body=0),
        ),
    )


class SecretFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.base)
        self.state = os.path.join(self.base, "state")
        self.folder = os.path.join(self.state, "csrf")

    def test_made_once_and_kept(self) -> None:
        """32 random bytes per service, in a private directory; the same ones at every start."""
        first = csrf_secrets(site(self.state))
        self.assertEqual(sorted(first), ["form", "hello"])  # a static pool has no forms
        self.assertEqual({len(v) for v in first.values()}, {SECRET_BYTES})
        self.assertNotEqual(first["hello"], first["form"])
        self.assertEqual(stat.S_IMODE(os.stat(self.folder).st_mode), 0o700)
        for name in ("hello", "form"):
            st = os.stat(os.path.join(self.folder, f"{name}.key"))
            self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o600, os.geteuid()))
        self.assertEqual(csrf_secrets(site(self.state)), first)

    def test_rotation_by_deleting(self) -> None:
        first = csrf_secrets(site(self.state))
        os.unlink(os.path.join(self.folder, "hello.key"))
        second = csrf_secrets(site(self.state))
        self.assertNotEqual(second["hello"], first["hello"])
        self.assertEqual(second["form"], first["form"])

    def test_refused_files(self) -> None:
        """A file open to others, of the wrong size, or a link is refused with one line naming it."""
        csrf_secrets(site(self.state))
        key = os.path.join(self.folder, "hello.key")
        os.chmod(key, 0o644)
        e = self.assertRaises(SecretError, csrf_secrets, site(self.state))
        self.assertEqual(str(e), f"site.ini: [okws] state_dir: {key} is open to others (mode 0644); chmod go= it")
        os.chmod(key, 0o600)
        with open(key, "wb") as f:
            f.write(b"short")
        e = self.assertRaises(SecretError, csrf_secrets, site(self.state))
        self.assertIn("holds 5 bytes, not a 32-byte secret; delete it", str(e))
        os.unlink(key)
        os.symlink("/etc/hostname", key)
        e = self.assertRaises(SecretError, csrf_secrets, site(self.state))
        self.assertIn("is not a regular file", str(e))
        os.unlink(key)
        os.chmod(self.folder, 0o755)
        e = self.assertRaises(SecretError, csrf_secrets, site(self.state))
        self.assertIn("csrf is open to others (mode 0755)", str(e))


class SpawningReactor(Reactor):
    """Records each spawn and keeps the child's end of its control channel to read what it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.control: dict[str, socket.socket] = {}
        self.next_pid = 4000

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None, path: Any = None,
                     childFDs: Any = None, **kwargs: Any) -> Any:
        name = args[-1]
        self.control[name] = socket.socket(fileno=os.dup(childFDs[control.CONTROL_FD]))
        self.next_pid += 1
        transport = type("T", (), {"pid": self.next_pid, "closeStdin": lambda self: None})()
        proto.transport = transport
        return transport


class WhereSecretsGoTests(SynchronousTestCase):
    def test_each_service_gets_its_own_only(self) -> None:
        base = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, base)
        config = site(os.path.join(base, "state"), root=base)
        reactor = SpawningReactor()
        launcher = Launcher(config, [], reactor=reactor)
        launcher.jailed = False
        launcher.csrf_secrets = csrf_secrets(config)
        seen: dict[str, Any] = {}
        for slot in [*launcher.instances, launcher.dispatcher, launcher.publisher]:
            slot.spawn()
            sock = reactor.control[slot.name]
            self.addCleanup(sock.close)
            seen[slot.name] = read_one_blocking(sock, 5, limits.CONTROL_CHILD)
            if slot.current is not None and slot.current.ctl is not None:
                slot.current.ctl.close()
        secrets = {name: base64.b64encode(value).decode() for name, value in launcher.csrf_secrets.items()}
        self.assertEqual(seen["hello.0"].meta["csrf_secret"], secrets["hello"])
        self.assertEqual(seen["form.0"].meta["csrf_secret"], secrets["form"])
        for name in ("assets.0", "dispatcher", "pubd"):
            self.assertNotIn("csrf_secret", seen[name].meta, name)
        self.assertEqual(seen["assets.0"].meta["root"], base)  # not jailed: the real root
        for name, msg in seen.items():
            for secret in secrets.values():
                self.assertNotIn(secret.encode(), msg.payload, f"a secret in the site configuration sent to {name}")
            other = {"hello.0": secrets["form"], "form.0": secrets["hello"]}.get(name)
            if other is not None:
                self.assertNotIn(other, str(msg.meta), name)
