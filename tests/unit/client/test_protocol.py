"""``judge_client.protocol`` is the one import for the wire models: every public name of
each wire module is re-exported there, as the same object, and nothing else."""

from __future__ import annotations

import ast
import importlib
import inspect
from types import ModuleType

import judge_client.protocol as protocol
import pytest

WIRE_MODULES = ("fields", "score_requests", "score_results", "compare", "rank", "batches", "status")


def _defined_public_names(module: ModuleType) -> set[str]:
    """The public names a module defines itself (classes, functions, assignments), from its source."""
    names: set[str] = set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("name", WIRE_MODULES)
def test_protocol_reexports_every_public_name_of_each_wire_module(name: str) -> None:
    module = importlib.import_module(f"judge_client.{name}")
    defined = _defined_public_names(module)
    assert defined, name
    assert defined <= set(protocol.__all__), sorted(defined - set(protocol.__all__))
    for public in defined:
        assert getattr(protocol, public) is getattr(module, public), public


def test_protocol_exports_only_names_of_the_wire_modules() -> None:
    modules = [importlib.import_module(f"judge_client.{name}") for name in WIRE_MODULES]
    defined = set().union(*(_defined_public_names(module) for module in modules))
    assert sorted(protocol.__all__) == sorted(defined)
    assert len(protocol.__all__) == len(set(protocol.__all__))
