"""Unit tests for an instance's resource plan (L{okws_twisted.launcher.limits})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import ServiceConfig
from okws_twisted.launcher.limits import ResourcePlan, plan

GIB = 1 << 30


def service(**kwargs: object) -> ServiceConfig:
    return ServiceConfig(name="a", resource="a:B", paths=("/a",), **kwargs)  # type: ignore[arg-type]


class PlanTests(SynchronousTestCase):
    def test_cgroups_take_everything(self) -> None:
        self.assertEqual(plan(service(), True, True), ResourcePlan(memory=GIB, pids=64))
        self.assertEqual(plan(service(fork=True, max_processes=20), True, True), ResourcePlan(memory=GIB, pids=20))

    def test_without_a_memory_cgroup_address_space_and_file_size(self) -> None:
        self.assertEqual(
            plan(service(memory_limit=256 << 20), False, True),
            ResourcePlan(pids=64, address_space=256 << 20, file_size=256 << 20),
        )

    def test_without_a_pids_cgroup_nproc_only_for_forking_services(self) -> None:
        self.assertEqual(plan(service(), True, False), ResourcePlan(memory=GIB))
        # Per uid, shared by the instances and a successor starting during a relaunch.
        self.assertEqual(
            plan(service(fork=True, instances=3, max_processes=20), True, False),
            ResourcePlan(memory=GIB, processes=80),
        )
