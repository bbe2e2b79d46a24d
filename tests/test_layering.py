"""Dependencies point one way: the import graph of the product, read with `ast`.

Every import counts, at the top of a module or inside a function: an import placed in a
function hides a cycle from Python, not from a reader. What is checked:

- no cycle between modules, and none between packages (a Django app, or a top-level folder);
  an app's models may refer to other apps' models (Django ties them by label), so imports of
  a `models` module do not make a package depend on another; the HTTP edges (`panel.api`,
  `panel.ui`, every app's own `api.py`, management commands, urls and asgi) sit on top and
  are left out of the package graph;
- nothing but tests imports the job table (`panel.jobs`), except the module kept for the
  dotted path that operations queued before the job runner moved still name;
- outside the HTTP edges nothing imports `panel.api` (its models aside);
- only the driver room imports libvirt.
"""

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("panel", "nodes", "templates_os", "recipes", "novnc", "backup")
# Modules that exist for a dotted path stored in the queue or in schedules by older versions.
STORED_PATHS = {"panel.vps.tasks": "panel.vps.tasks.run_operation"}
DRIVER_ROOM = {"nodes.driver", "nodes.fake", "nodes.keepalive", "nodes.libvirt_backups", "nodes.libvirt_disks", "nodes.libvirt_errors",
               "nodes.libvirt_snapshots",
               "nodes.libvirt_ovf"}
ENTRY_POINTS = {"panel.urls", "panel.asgi", "panel.settings", "panel.jobs", *STORED_PATHS}


def _module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = _module_files()


def _resolve(dotted: str) -> str | None:
    """The project module that `dotted` (a module, or a name in one) lives in."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported dotted name, imported inside a function?) for every import in the file."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.extend((f"{child.module}.{alias.name}", in_function) for alias in child.names)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def _graph() -> dict[str, set[str]]:
    edges = defaultdict(set)
    for name, path in MODULES.items():
        for dotted, _inside in _imports(path):
            target = _resolve(dotted)
            if target and target != name:
                edges[name].add(target)
    return edges


GRAPH = _graph()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one vertex (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(vertex):
        index[vertex] = low[vertex] = len(index)
        stack.append(vertex)
        on_stack.add(vertex)
        for other in edges.get(vertex, ()):
            if other not in index:
                connect(other)
                low[vertex] = min(low[vertex], low[other])
            elif other in on_stack:
                low[vertex] = min(low[vertex], index[other])
        if low[vertex] == index[vertex]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == vertex:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for vertex in sorted(set(edges) | {v for targets in edges.values() for v in targets}):
        if vertex not in index:
            connect(vertex)
    return found


def _is_http_edge(module: str) -> bool:
    parts = module.split(".")
    return (module in ENTRY_POINTS or module.startswith(("panel.api", "panel.ui")) or parts[-1] == "api"
            or "management" in parts)


def package_of(module: str) -> str:
    """A Django app inside `panel/` (panel.vps), a top-level folder (nodes), or a module of its
    own for the project's root modules (panel.crypto)."""
    parts = module.split(".")
    if parts[0] == "panel" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _package_graph() -> dict[str, set[str]]:
    edges = defaultdict(set)
    for source, targets in GRAPH.items():
        if _is_http_edge(source):
            continue
        for target in targets:
            if target.endswith(".models") or _is_http_edge(target):
                continue
            if package_of(source) != package_of(target):
                edges[package_of(source)].add(package_of(target))
    return edges


def _importers(predicate) -> dict[str, list[str]]:
    found = defaultdict(list)
    for source, targets in GRAPH.items():
        for target in targets:
            if predicate(target):
                found[target].append(source)
    return found


def test_no_module_imports_another_that_imports_it_back():
    assert _cycles(GRAPH) == []


def test_no_package_depends_on_another_that_depends_on_it_back():
    edges = _package_graph()
    cycles = _cycles(edges)
    witnesses = [f"{a} -> {b}: " + ", ".join(sorted(f"{s}->{t}" for s, ts in GRAPH.items() for t in ts
                                                      if package_of(s) == a and package_of(t) == b
                                                      and not _is_http_edge(s) and not _is_http_edge(t)
                                                      and not t.endswith(".models")))
                 for cycle in cycles for a in cycle for b in sorted(edges[a]) if b in cycle]
    assert cycles == [], "\n".join(witnesses)


def test_nothing_but_tests_imports_the_job_table():
    importers = {source for source, targets in GRAPH.items() if "panel.jobs" in targets}
    assert importers <= set(STORED_PATHS)


def test_only_the_http_edges_import_the_api_package():
    outside = {target: sorted(s for s in sources if not _is_http_edge(s))
               for target, sources in _importers(lambda t: t.startswith("panel.api")
                                                 and t != "panel.api.models").items()}
    assert {t: s for t, s in outside.items() if s} == {}


def test_only_the_driver_room_imports_libvirt():
    importers = {name for name, path in MODULES.items()
                 if any(dotted == "libvirt" or dotted.startswith("libvirt.") for dotted, _ in _imports(path))}
    assert importers <= DRIVER_ROOM, sorted(importers - DRIVER_ROOM)


@pytest.mark.parametrize("dotted", sorted(STORED_PATHS.values()))
def test_a_dotted_path_stored_by_an_older_version_still_resolves(dotted):
    module, _, name = dotted.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_the_graph_is_read_from_every_kind_of_import():
    """The reader itself: a function-level import is seen, and so is a `from x import y`."""
    imports = dict(_imports(Path(__file__)))
    assert imports["importlib"] is False
    assert imports["collections.defaultdict"] is False
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(STORED_PATHS))
def test_a_module_kept_for_a_stored_path_only_passes_on_to_the_job_table(module):
    """Such a module is left out of the graph above, so it must hold nothing else."""
    project_imports = {_resolve(dotted) for dotted, _ in _imports(MODULES[module])} - {None}
    assert project_imports == {"panel.jobs"}
