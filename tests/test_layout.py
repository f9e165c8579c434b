"""The shape of the tree holds: one skeleton in every service, imports pointing down, the kernel
free of services and test code, subscriptions readable without a process, routes declared once.

Imports point down, annotations included: ``bootstrap`` (the composition root) imports every
layer and builds the typed dependencies object that ``dependencies.py`` declares below the
entrypoints, so no import runs back up, not even one made only for type checking.

Read from the source (``ast``), so a late function-level import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from emeterai_shared.messaging import Subscription
from emeterai_shared.runtime import ServiceDefinition

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("order", "payment", "minting", "stamping")
KERNEL = ROOT / "shared" / "emeterai_shared"
SKELETON = {"__init__.py", "__main__.py", "bootstrap.py", "dependencies.py", "config.py", "metrics.py", "domain",
            "service_layer", "adapters", "entrypoints", "migrations"}
ENTRYPOINTS = {"__init__.py", "http.py", "messages.py", "cli.py"}
LAYERS = ("domain", "service_layer", "adapters", "entrypoints")
# What each layer may import from its own service: imports point down only.
MAY_IMPORT = {
    "domain": {"domain"},
    "adapters": {"domain", "adapters", "config", "metrics"},
    "service_layer": {"domain", "adapters", "service_layer", "config", "metrics"},
    "dependencies": {"domain", "adapters", "service_layer", "config", "metrics"},
    "entrypoints": {"domain", "adapters", "service_layer", "entrypoints", "dependencies", "config", "metrics"},
}
IO_LIBRARIES = {"aiohttp", "asyncpg", "aio_pika", "emeterai_shared.uow", "emeterai_shared.db"}


def package(svc: str) -> Path:
    return ROOT / "services" / svc / f"{svc}_service"


def python_files(top: Path) -> Iterator[Path]:
    yield from (p for p in sorted(top.rglob("*.py")) if "__pycache__" not in p.parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, under ``TYPE_CHECKING`` too (absolute names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_kernel_imports_no_service_no_test_kit_and_no_pytest() -> None:
    for path in python_files(KERNEL):
        bad = {m for m in imports(path) if top(m) in {"pytest", "emeterai_testkit", "_pytest"}
               or top(m).endswith("_service")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("svc", SERVICES)
def test_every_service_has_the_one_skeleton(svc: str) -> None:
    entries = {p.name for p in package(svc).iterdir() if p.name != "__pycache__"}
    assert entries == SKELETON, f"{svc}: {sorted(entries ^ SKELETON)} differ from the skeleton"
    entrypoints = {p.name for p in (package(svc) / "entrypoints").iterdir() if p.suffix == ".py"}
    assert {"__init__.py", "http.py", "messages.py"} <= entrypoints
    assert entrypoints <= ENTRYPOINTS, f"{svc}: entrypoints holds {sorted(entrypoints - ENTRYPOINTS)}"


@pytest.mark.parametrize("svc", SERVICES)
def test_imports_point_down_and_never_across_services(svc: str) -> None:
    own = f"{svc}_service"
    for path in python_files(package(svc)):
        relative = path.relative_to(package(svc))
        names = imports(path)
        others = {m for m in names if top(m).endswith("_service") and top(m) != own}
        assert not others, f"{svc}/{relative} imports another service: {sorted(others)}"
        assert not {m for m in names if top(m) in {"pytest", "emeterai_testkit"}}, f"{svc}/{relative}"
        layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        if layer not in MAY_IMPORT:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != own or len(parts) < 2:
                continue
            assert parts[1] in MAY_IMPORT[layer], f"{svc}/{relative} ({layer}) imports {name}: imports point down"
        if layer == "domain":
            io = {m for m in names if m in IO_LIBRARIES or top(m) in IO_LIBRARIES}
            assert not io, f"{svc}/{relative}: the domain is pure, yet imports {sorted(io)}"


def definition(svc: str) -> ServiceDefinition[object]:
    defn = importlib.import_module(f"{svc}_service.bootstrap").SERVICE
    assert isinstance(defn, ServiceDefinition)
    return defn


@pytest.mark.parametrize("svc", SERVICES)
def test_subscriptions_are_a_module_level_table(svc: str) -> None:
    """Tooling lists queues, types and what each handler needs without a settings object or a pool."""
    table = importlib.import_module(f"{svc}_service.entrypoints.messages").SUBSCRIPTIONS
    assert isinstance(table, tuple) and table and all(isinstance(s, Subscription) for s in table)
    assert definition(svc).subscriptions is table
    for sub in table:
        assert list(inspect.signature(sub.handler).parameters)[:2] == ["uow", "env"], sub.queue
        assert sub.handler.__module__ == f"{svc}_service.service_layer.handlers", (
            f"{sub.queue}: message handlers live in service_layer/handlers.py")


@pytest.mark.parametrize("svc", SERVICES)
def test_routes_are_declared_once_through_the_router(svc: str) -> None:
    """No service registers a route on aiohttp's router or adds an OpenAPI operation by itself: one
    ``router.add(operation, handler)`` does both."""
    for path in python_files(package(svc)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("add_") and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "router":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} registers a route outside Router.add")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "spec":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} documents a route apart from its handler")


@pytest.mark.parametrize("svc", SERVICES)
def test_dependencies_are_typed_not_an_extras_dict(svc: str) -> None:
    for path in python_files(package(svc)):
        source = path.read_text()
        assert ".extras" not in source, f"{path.relative_to(ROOT)} uses an untyped extras dict"
