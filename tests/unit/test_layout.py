"""The package tree shows the architecture: imports run one way, from HTTP down to the
engines, and the table below is the layering. Every module is parsed with ``ast`` (lazy
imports inside functions count too); each ``service.*`` import is mapped to its package,
and that package must be one its importer may use.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"

CORE = "service.core"
CONFIG = "service.config"
OBS = "service.observability"
METHODS = "service.methods"
OFFLINE = "service.offline"
ENGINES = "service.engines"
TRANSFORMERS = "service.engines.transformers"
VLLM = "service.engines.vllm"
SCHEDULING = "service.scheduling"
REQUESTS = "service.requests"
SERVING = "service.serving"
JOBS = "service.jobs"
HTTP = "service.http"
CLI = "service.cli"
APP = "service.app"
PACKAGE = "service"  # the package itself: its version
MAIN = "service.__main__"

# Which packages each package may import (its own modules always). Read top-down: HTTP
# hands requests to jobs and serving, serving to requests and scheduling, scheduling to
# the engines; the maths (methods) uses nothing of ours but core; core uses nothing.
ALLOWED: dict[str, set[str]] = {
    CORE: set(),
    CONFIG: set(),
    OBS: set(),
    PACKAGE: set(),
    METHODS: {CORE},
    OFFLINE: {METHODS, CORE},
    # The factory alone builds an implementation, lazily, once the engine is chosen.
    ENGINES: {TRANSFORMERS, VLLM, CORE, CONFIG},
    TRANSFORMERS: {ENGINES, CORE, CONFIG},
    VLLM: {ENGINES, CORE, CONFIG},
    SCHEDULING: {ENGINES, CORE, OBS},
    REQUESTS: {METHODS, SCHEDULING, ENGINES, CORE, CONFIG},
    SERVING: {REQUESTS, SCHEDULING, ENGINES, METHODS, CORE, OBS, CONFIG},
    JOBS: {SERVING, REQUESTS, SCHEDULING, ENGINES, CORE, OBS, CONFIG},
    HTTP: {JOBS, SERVING, REQUESTS, SCHEDULING, ENGINES, CORE, OBS, CONFIG},
    CLI: {APP, HTTP, SERVING, REQUESTS, METHODS, OFFLINE, ENGINES, CORE, OBS, CONFIG},
    APP: {PACKAGE, HTTP, JOBS, SERVING, REQUESTS, SCHEDULING, ENGINES, CORE, OBS, CONFIG},
    MAIN: {CLI},
}


def package_of(module: str) -> str:
    """The table's key that ``module`` belongs to: the longest key that is it or holds it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in ALLOWED:
            return name
    raise AssertionError(f"{module} belongs to no package of the layering table")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def service_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of ours in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from service.x import y`` may name a module y: it belongs where x.y does.
            for alias in node.names:
                full = f"{module}.{alias.name}"
                yield node.lineno, full if (SERVICE.parent / (full.replace(".", "/") + ".py")).exists() else module


MODULES = sorted(SERVICE.rglob("*.py"))


def test_every_module_belongs_to_a_package_of_the_table() -> None:
    for path in MODULES:
        package_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    importer = package_of(module_name(path))
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module} ({package_of(module)})"
        for line, module in service_imports(path)
        if module.split(".")[0] == "service"
        and package_of(module) != importer
        and package_of(module) not in ALLOWED[importer]
    ]
    assert not wrong, f"{importer} may import only {sorted(ALLOWED[importer])}:\n" + "\n".join(wrong)


def test_the_table_is_a_hierarchy() -> None:
    """Apart from the engine factory's lazy choice of an implementation, no package may
    reach itself again through the table."""
    graph = {
        importer: {p for p in allowed if not (importer == ENGINES and p in (TRANSFORMERS, VLLM))}
        for importer, allowed in ALLOWED.items()
    }
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"the layering has a cycle: {exc.args[1]}")


def test_methods_import_nothing_of_ours_but_core() -> None:
    for path in sorted((SERVICE / "methods").rglob("*.py")):
        for line, module in service_imports(path):
            if module.split(".")[0] == "service":
                assert package_of(module) in (METHODS, CORE), f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_core_does_not_import_the_web_framework() -> None:
    for path in sorted((SERVICE / "core").rglob("*.py")):
        for _, module in service_imports(path):
            assert module.split(".")[0] not in ("fastapi", "starlette", "torch", "vllm"), path


def test_no_import_circle_between_files() -> None:
    """No module reaches itself again through the imports written in the files (lazy ones
    included), whatever the packages allow."""
    names = {module_name(path) for path in MODULES}
    graph = {
        module_name(path): {
            module for _, module in service_imports(path) if module in names and module != module_name(path)
        }
        for path in MODULES
    }
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail("an import circle between files: " + " -> ".join(exc.args[1]))
