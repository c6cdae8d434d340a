"""
The import walls of DESIGN.md "Who may import whom", checked in fresh interpreters.

Importing a module in a new process and listing ``sys.modules`` shows what a
process of that role really loads, not what we believe it does.  The import
graph itself (every ``import`` statement of the package, read with C{ast}) is
checked for cycles and for arrows that run the wrong way between subpackages.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import REPO

PACKAGE = os.path.join(REPO, "okws_twisted")

#: The process subpackages: none may import another.
PROCESSES = ("launcher", "dispatcher", "service", "logd", "pubd", "tlsfront", "dbproxy", "static")
#: What every process may use.
SHARED = ("wire", "config", "bootstrap", "jail", "interfaces", "faces", "templating", "sqlqueries")


def modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return set(json.loads(out.stdout))


def _loaded_from(loaded: set[str], *prefixes: str) -> set[str]:
    return {m for m in loaded if any(m == p or m.startswith(p + ".") for p in prefixes)}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except what sits under C{if TYPE_CHECKING:} (type hints import nothing at run time)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any depth in its code, lazily or not)."""
    graph: dict[str, set[str]] = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
            module = rel.removesuffix(".__init__")
            targets: set[str] = set()
            for node in _runtime_nodes(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
                    targets.update(f"{node.module}.{a.name}" for a in node.names)
            graph[module] = {t for t in targets if t.startswith("okws_twisted.")}
    # Keep only names that are modules (``from pkg import name`` may name a function).
    return {m: {t for t in ts if t in graph} for m, ts in graph.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


class ImportGraphTests(SynchronousTestCase):
    def test_no_cycles(self) -> None:
        """No module imports itself through others (faces' lazy names do not count: they are not imports)."""
        graph = import_graph()
        state: dict[str, int] = {}
        cycles: list[list[str]] = []

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            for nxt in sorted(graph.get(node, ())):
                if state.get(nxt) == 1:
                    cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
                elif nxt not in state:
                    visit(nxt, path + [nxt])
            state[node] = 2

        for module in sorted(graph):
            if module not in state:
                visit(module, [module])
        self.assertEqual(cycles, [])

    def test_arrows_run_one_way(self) -> None:
        """A process subpackage never imports another; wire/ and the shared modules import no process subpackage.

        One exception, by design: the launcher's resource check runs
        L{okws_twisted.service.check} as a separate process, by name, and
        imports nothing of it.
        """
        wrong = []
        for module, targets in import_graph().items():
            here = _top(module)
            for target in targets:
                there = _top(target)
                if there == here or there not in PROCESSES:
                    continue
                if here in PROCESSES or here in SHARED:
                    wrong.append(f"{module} -> {target}")
        # testing.py is the authors' in-memory world: it may use service/ (and pubd's tree reader).
        self.assertEqual(sorted(w for w in wrong if not w.startswith("okws_twisted.testing ")), [])

    def test_graph_sees_imports(self) -> None:
        """The graph is not empty by accident: it sees the dispatcher importing wire/."""
        graph = import_graph()
        self.assertIn("okws_twisted.wire.handoff", graph["okws_twisted.dispatcher.pool"])
        self.assertIn("okws_twisted.config.site", graph["okws_twisted.config.reading"])


class ImportWallTests(SynchronousTestCase):
    def test_dispatcher_runs_no_site_code(self) -> None:
        loaded = modules_after_import("okws_twisted.dispatcher.dispatcher")
        self.assertIn("okws_twisted.dispatcher.pool", loaded)
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.pubd", "okws_twisted.testing",
                                      "okws_twisted.templating", "jinja2", "markupsafe", "services"), set())

    def test_tls_front_runs_no_site_code(self) -> None:
        """The process holding the private keys runs nothing site authors wrote, and no web code."""
        loaded = modules_after_import("okws_twisted.tlsfront.front")
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.dispatcher", "okws_twisted.pubd",
                                      "okws_twisted.testing", "okws_twisted.templating", "twisted.web", "jinja2",
                                      "services"), set())

    def test_publisher_runs_no_site_code(self) -> None:
        """The template publisher reads templates; it never imports services or serves requests."""
        loaded = modules_after_import("okws_twisted.pubd.publisher")
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.dispatcher", "okws_twisted.launcher",
                                      "okws_twisted.testing", "twisted.web.server", "services"), set())

    def test_services_preload_what_jinja2_loads_late(self) -> None:
        """What jinja2 imports lazily (a string literal, a template error) is loaded with the
        service's renderer, so a template never waits on an import mid-render."""
        loaded = modules_after_import("okws_twisted.service.rendering")
        for needed in ("jinja2.debug", "encodings.unicode_escape"):
            self.assertIn(needed, loaded)

    def test_database_proxy_runs_no_site_code_and_no_web(self) -> None:
        """The process holding the database loads no service code, no web code, no templates."""
        loaded = modules_after_import("okws_twisted.dbproxy.proxy")
        self.assertIn("okws_twisted.dbproxy.engine", loaded)
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.dispatcher", "okws_twisted.launcher",
                                      "okws_twisted.pubd", "okws_twisted.testing", "okws_twisted.templating",
                                      "okws_twisted.wire.transport", "twisted.web", "jinja2", "services"), set())
        # psycopg only for a postgresql: url (it costs about 10 MiB).
        self.assertEqual(_loaded_from(loaded, "psycopg"), set())

    def test_services_reach_no_database_themselves(self) -> None:
        """A service process loads no database driver, no queries reader and nothing of the proxy."""
        loaded = modules_after_import("okws_twisted.service.runtime, okws_twisted.service.dbclient")
        self.assertIn("okws_twisted.service.dbclient", loaded)
        self.assertEqual(_loaded_from(loaded, "okws_twisted.dbproxy", "okws_twisted.sqlqueries", "aiosql", "sqlite3",
                                      "_sqlite3", "psycopg"), set())

    def test_services_load_jinja2_and_the_database_client_when_used(self) -> None:
        """The runtime loads neither jinja2 nor the proxy's client until a template is rendered or
        a service has C{db} (issue 14: idle instance RSS): tests.test_e2e_core checks a process."""
        loaded = modules_after_import("okws_twisted.service.runtime, okws_twisted.service.resource")
        self.assertEqual(_loaded_from(loaded, "jinja2", "markupsafe", "okws_twisted.templating",
                                      "okws_twisted.service.rendering", "okws_twisted.service.dbclient"), set())

    def test_static_files_load_no_service_code(self) -> None:
        """The static pools' resource is okws's own: it loads nothing of the service runtime, no
        jinja2 and no site code (the runtime loads it by name; no import arrow joins them)."""
        loaded = modules_after_import("okws_twisted.static.resource")
        self.assertIn("okws_twisted.static.beneath", loaded)
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.dispatcher", "okws_twisted.launcher",
                                      "okws_twisted.pubd", "okws_twisted.templating", "okws_twisted.testing", "jinja2",
                                      "markupsafe", "services"), set())

    def test_launcher_runs_no_site_code(self) -> None:
        loaded = modules_after_import("okws_twisted.launcher.tap")
        self.assertIn("okws_twisted.launcher.site", loaded)
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.dispatcher", "okws_twisted.pubd",
                                      "okws_twisted.templating", "jinja2", "services"), set())

    def test_log_daemon_runs_no_site_code_and_no_web(self) -> None:
        loaded = modules_after_import("okws_twisted.logd.daemon")
        self.assertEqual(_loaded_from(loaded, "okws_twisted.service", "okws_twisted.dispatcher", "okws_twisted.launcher",
                                      "okws_twisted.pubd", "okws_twisted.wire.transport", "twisted.web", "jinja2",
                                      "services"), set())

    def test_pure_logic_needs_no_twisted(self) -> None:
        """Record checks, line formats, config and the PROXY header reader need no Twisted and no I/O."""
        for module in ("okws_twisted.logd.format", "okws_twisted.config", "okws_twisted.dispatcher.proxyproto",
                       "okws_twisted.wire.httpframe"):
            loaded = modules_after_import(module)
            self.assertEqual({name for name in loaded if name.split(".")[0] in ("twisted", "zope")}, set(), module)

    def test_faces_load_nothing_until_used(self) -> None:
        """Importing a subpackage's face loads none of its modules (so its pure modules stay pure)."""
        for package in ("okws_twisted.launcher", "okws_twisted.dispatcher", "okws_twisted.service",
                        "okws_twisted.logd", "okws_twisted.pubd", "okws_twisted.tlsfront", "okws_twisted.wire",
                        "okws_twisted.dbproxy", "okws_twisted.static"):
            loaded = modules_after_import(package)
            self.assertEqual(_loaded_from(loaded, package) - {package}, set(), package)

    def test_author_api_is_one_process(self) -> None:
        for module in ("okws_twisted.service.resource", "okws_twisted.testing"):
            loaded = modules_after_import(module)
            self.assertEqual(_loaded_from(loaded, "okws_twisted.launcher", "okws_twisted.dispatcher",
                                          "okws_twisted.pubd.publisher", "okws_twisted.service.templateclient",
                                          "okws_twisted.wire.templatechannel.Get"), set(), module)

    def test_public_api(self) -> None:
        import okws_twisted

        self.assertEqual(
            sorted(okws_twisted.__all__),
            ["DatabaseError", "DatabaseUnavailable", "QueryFailed", "QueryRefused", "ServiceResource", "__version__"],
        )
        from okws_twisted.service import database
        from okws_twisted.service.resource import ServiceResource

        self.assertIs(okws_twisted.ServiceResource, ServiceResource)
        for name in ("DatabaseError", "DatabaseUnavailable", "QueryFailed", "QueryRefused"):
            self.assertIs(getattr(okws_twisted, name), getattr(database, name))
        for name in ("DatabaseUnavailable", "QueryFailed", "QueryRefused"):
            self.assertTrue(issubclass(getattr(okws_twisted, name), okws_twisted.DatabaseError), name)
        with self.assertRaises(AttributeError):
            okws_twisted.NoSuchThing  # noqa: B018

    def test_faces_export_what_they_name(self) -> None:
        """Every name in a subpackage's C{__all__} resolves (the lazy faces have no typo)."""
        import importlib

        for package in ("launcher", "dispatcher", "service", "logd", "pubd", "tlsfront", "dbproxy"):
            face = importlib.import_module(f"okws_twisted.{package}")
            for name in face.__all__:
                self.assertIsNotNone(getattr(face, name), f"{package}.{name}")
