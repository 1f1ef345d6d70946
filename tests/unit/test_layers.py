"""Imports point one way (../shared/STYLE.md): the HTTP and Celery layers call the domain, the
domain never calls back, and no modules import each other in a circle. Read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "creditapp"
# The domain's rooms, lowest first: a room imports only rooms before it. The ledger knows only
# accounts; auth knows users; accounts answers which account a caller pays from; billing meters a
# call paid from an account; chat and the gateway are its callers; jobs run
# over all of them.
DOMAIN = (
    "ledger",
    "metering",
    "pricing",
    "auth",
    "accounts",
    "purchases",
    "billing",
    "chat",
    "gateway",
    "jobs",
)
# The app factory composes the layers: it alone, outside them, registers the HTTP layer.
FACTORY = "creditapp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, set[str]]:
    """Each module of creditapp/ with every module it imports (at the top or in a function)."""
    names = {_module_name(path) for path in PACKAGE.rglob("*.py")}
    imports: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from creditapp import ledger` imports the module creditapp.ledger (a
                # package's own __init__ running first is not counted as its import).
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & names
                found.update(submodules or {node.module})
        imports[_module_name(path)] = found
    return imports


def _imports_of(imports: dict[str, set[str]], prefix: str) -> dict[str, set[str]]:
    return {
        module: {name for name in found if name == prefix or name.startswith(f"{prefix}.")}
        for module, found in imports.items()
        if any(name == prefix or name.startswith(f"{prefix}.") for name in found)
    }


def test_nothing_outside_the_http_layer_imports_it_but_the_app_factory() -> None:
    importers = _imports_of(_modules(), "creditapp.api")
    assert {module for module in importers if not module.startswith("creditapp.api")} == {FACTORY}


def test_domain_modules_know_neither_requests_nor_the_layers_that_call_them() -> None:
    imports = _modules()
    domain = {
        module: found
        for module, found in imports.items()
        if module.split(".")[1:2] and module.split(".")[1] in DOMAIN
    }
    offending = {
        module: sorted(
            name
            for name in found
            if name.startswith(("creditapp.api", "creditapp.web", "tasks", "celery"))
            or name in ("flask", "werkzeug")
            or name.startswith("flask_limiter")
        )
        for module, found in domain.items()
    }
    assert {module: names for module, names in offending.items() if names} == {}


def test_no_room_of_the_domain_imports_a_higher_one() -> None:
    rank = {room: position for position, room in enumerate(DOMAIN)}
    upward = sorted(
        (module, name)
        for module, found in _modules().items()
        if module.split(".")[1:2] and module.split(".")[1] in rank
        for name in found
        if name.split(".")[1:2]
        and name.split(".")[1] in rank
        and rank[name.split(".")[1]] > rank[module.split(".")[1]]
    )
    assert upward == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    imports = _modules()
    graph = {
        module: {name for name in found if name in imports and name != module}
        for module, found in imports.items()
        if module != FACTORY  # the composition root imports everything, and nothing imports it
    }
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(graph.get(module, ())):
            if state.get(name) == "open":
                cycles.append([*path[path.index(name) :], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_endpoint_looks_up_an_account_by_its_owner() -> None:
    """Which account a caller pays from is `creditapp.accounts`' answer, for every door."""
    asking = sorted(
        str(path.relative_to(ROOT))
        for path in (PACKAGE / "api").rglob("*.py")
        if any(
            name in path.read_text()
            for name in ("Account.user_id", "Account.team_id", "account_id_of")
        )
    )
    assert asking == []


def test_the_http_layer_reaches_the_ledger_through_its_package_names() -> None:
    """`creditapp.ledger`'s `__all__` is what the layers above use (its models for their
    columns): not its queries or operations behind it."""
    behind = sorted(
        (module, name)
        for module, found in _imports_of(_modules(), "creditapp.ledger").items()
        if module.startswith("creditapp.api")
        for name in found
        if name not in ("creditapp.ledger", "creditapp.ledger.models")
    )
    assert behind == []


def test_no_endpoint_runs_a_query_of_its_own() -> None:
    """A view calls a service: the queries are the domain's (the pager only runs the query a
    service built, a page at a time)."""
    views = [path for path in (PACKAGE / "api").rglob("*.py") if "Blueprint(" in path.read_text()]
    querying = sorted(
        str(path.relative_to(ROOT))
        for path in views
        if any(word in path.read_text() for word in ("select(", "session.execute("))
    )
    assert querying == []


def test_every_rate_limit_is_read_in_one_place() -> None:
    """`creditapp.api.limits` reads the limit settings; the views name its functions."""
    reading = sorted(
        str(path.relative_to(ROOT))
        for path in (PACKAGE / "api").rglob("*.py")
        if path.name != "limits.py"
        and ('_LIMIT"]' in path.read_text() or "RATELIMIT_" in path.read_text())
    )
    assert reading == []
