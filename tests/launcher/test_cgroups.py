"""Unit tests for finding the cgroup hierarchies (L{okws_twisted.launcher.cgroups}) in a made-up /proc and /sys."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.launcher.cgroups import Hierarchy, RunCgroups, find


class FindTests(SynchronousTestCase):
    def tree(self, mountinfo: str, cgroup: str) -> tuple[str, str]:
        root = tempfile.mkdtemp()
        proc = os.path.join(root, "proc")
        os.mkdir(proc)
        with open(os.path.join(proc, "mountinfo"), "w") as f:
            f.write(mountinfo.replace("ROOT", root))
        with open(os.path.join(proc, "cgroup"), "w") as f:
            f.write(cgroup)
        return root, proc

    def test_v1_hybrid(self) -> None:
        """This kind of host: v1 memory and pids, a v2 tree with neither."""
        root, proc = self.tree(
            "30 25 0:26 / ROOT/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
            "31 25 0:27 / ROOT/pids rw,relatime - cgroup cgroup rw,pids\n"
            "32 25 0:28 / ROOT/unified rw - cgroup2 cgroup2 rw\n",
            "8:pids:/\n4:memory:/box/1\n0::/\n",
        )
        os.makedirs(os.path.join(root, "memory", "box", "1"))
        os.makedirs(os.path.join(root, "pids"))
        os.makedirs(os.path.join(root, "unified"))
        with open(os.path.join(root, "unified", "cgroup.controllers"), "w") as f:
            f.write("hugetlb\n")
        self.assertEqual(
            find(proc),
            {
                "memory": Hierarchy("memory", 1, os.path.join(root, "memory", "box/1")),
                "pids": Hierarchy("pids", 1, os.path.join(root, "pids", "")),
            },
        )

    def test_v2_preferred(self) -> None:
        root, proc = self.tree(
            "30 25 0:26 / ROOT/cg rw - cgroup2 cgroup2 rw,nsdelegate\n"
            "31 25 0:27 / ROOT/pids rw - cgroup cgroup rw,pids\n",
            "8:pids:/\n0::/system.slice/okws.service\n",
        )
        own = os.path.join(root, "cg", "system.slice/okws.service")
        os.makedirs(own)
        with open(os.path.join(own, "cgroup.controllers"), "w") as f:
            f.write("cpu memory pids\n")
        self.assertEqual(find(proc), {"memory": Hierarchy("memory", 2, own), "pids": Hierarchy("pids", 2, own)})

    def test_a_mount_of_part_of_the_hierarchy(self) -> None:
        """A container sees its own subtree mounted: paths are relative to the mount's root."""
        root, proc = self.tree(
            "30 25 0:26 /box ROOT/memory rw - cgroup cgroup rw,memory\n",
            "4:memory:/box/inner\n",
        )
        os.makedirs(os.path.join(root, "memory", "inner"))
        self.assertEqual(find(proc), {"memory": Hierarchy("memory", 1, os.path.join(root, "memory", "inner"))})

    def test_nothing(self) -> None:
        _root, proc = self.tree("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", "0::/\n")
        self.assertEqual(find(proc), {})


class RunCgroupsTests(SynchronousTestCase):
    def test_a_hierarchy_that_refuses_is_left_out_with_its_reason(self) -> None:
        own = tempfile.mkdtemp()
        # v2 wants the controller enabled for the subtree; a plain directory has no such file.
        run = RunCgroups({"memory": Hierarchy("memory", 2, own)}, "abc")
        self.assertEqual(run.controllers, frozenset())
        self.assertEqual(len(run.problems), 1)
        self.assertIn("memory (cgroup v2", run.problems[0])
        self.assertEqual(os.listdir(own), [])

    def test_stale_runs_of_dead_launchers_are_removed(self) -> None:
        own = tempfile.mkdtemp()
        os.makedirs(os.path.join(own, "okws-999999999-abc", "hello.0-1"))
        os.makedirs(os.path.join(own, f"okws-{os.getpid()}-def"))
        run = RunCgroups({"memory": Hierarchy("memory", 1, own)}, "0123")
        self.assertEqual(sorted(os.listdir(own)), sorted([f"okws-{os.getpid()}-def", f"okws-{os.getpid()}-0123"]))
        cgroup, problems = run.make("hello.0-1", 1 << 30, 64)
        # A plain directory has no memory.limit_in_bytes: the instance gets rlimits instead.
        self.assertEqual((cgroup.controllers, len(problems)), (frozenset(), 1))
        run.close()
        self.assertEqual(os.listdir(own), [f"okws-{os.getpid()}-def"])
