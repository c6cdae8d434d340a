"""
The operator's template tree and the publisher's read access (issue 15, item 14), as root.

The publisher runs as its own uid; when it could not read the tree, the launcher makes the tree
group-readable by the publisher's group (directories set-group-id) and says so once.  A tree
the publisher can already read (world-readable, the usual 0755/0644) is left exactly as it was.
What the kernel says (C{stat}, C{/proc/PID/status}) is checked, and the page renders.
"""

from __future__ import annotations

import os


from tests.e2e import E2ETestCase, Site

IS_ROOT = os.geteuid() == 0
SERVICES = "[service:hello]\nresource = services.hello:Hello\npaths = /hello\n"
TEMPLATES = {"hello.html": "Hi {{ name }}", "errors/404.html": "gone"}
GRANTED = r"templates: gave group (\d+) read access to "


def tree_stats(root: str) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for path in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return out


def set_modes(root: str, dir_mode: int, file_mode: int) -> None:
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, dir_mode)
        for name in files:
            os.chmod(os.path.join(dirpath, name), file_mode)


class TemplateTreeTests(E2ETestCase):
    if not IS_ROOT:
        skip = "needs root: the publisher only runs as another uid when the launcher is root"

    def site(self, dir_mode: int, file_mode: int) -> Site:
        site = Site(SERVICES, f"jail_root = /var/lib/okws-test/{os.urandom(4).hex()}\n", templates=TEMPLATES)
        self.addCleanup(site.close)
        set_modes(site.templates, dir_mode, file_mode)
        return site

    def test_readable_tree_left_alone(self) -> None:
        site = self.site(0o755, 0o644)
        before = tree_stats(site.templates)
        site.start()
        self.assertEqual(site.get("/hello?name=tree").body, b"Hi tree")
        self.assertEqual(tree_stats(site.templates), before)
        self.assertNotRegex(site.log_text(), GRANTED)

    def test_private_tree_granted_once(self) -> None:
        site = self.site(0o700, 0o600)
        site.start()
        self.assertEqual(site.get("/hello?name=tree").body, b"Hi tree")
        with open(f"/proc/{site.pids()['pubd']}/status") as f:
            pubd_gid = int(next(l for l in f if l.startswith("Gid:")).split()[1])
        granted = [l for l in site.log_text().splitlines() if "templates: gave group" in l]
        self.assertEqual(len(granted), 1, granted)
        self.assertIn(f"gave group {pubd_gid} read access to {site.templates}", granted[0])
        for rel, (uid, gid, mode) in tree_stats(site.templates).items():
            self.assertEqual(gid, pubd_gid, rel)
            self.assertEqual(mode, 0o2750 if os.path.isdir(os.path.join(site.templates, rel)) else 0o640, rel)
        # A relaunched publisher finds the tree readable: nothing more is changed or said.
        mark = site.mark()
        os.kill(site.pids()["pubd"], 9)
        site.wait_for(r"pubd pid \d+ is ready", after=mark)
        site.drain_log()
        self.assertEqual(sum("templates: gave group" in l for l in site.lines), 1)
