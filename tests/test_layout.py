"""The package layout's rules (DESIGN §2), checked on the source: who may import whom, and no import cycles.

Every ``import`` statement counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("facecore", "models", "training", "service")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str] = frozenset()) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved).

    ``from pkg import name`` depends on ``pkg.name`` when that is one of the ``known`` modules, else on ``pkg``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in known else mod)
    return found


def source_graph() -> dict[str, set[str]]:
    """Every module of the project's packages → the names it imports."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "node_modules" not in p.parts]
    modules = {module_name(p): p for p in files}
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def top(name: str) -> str:
    return name.split(".")[0]


def test_import_rules():
    everything = source_graph()
    forbidden = {
        "facecore": {"torch", "fastapi", "starlette", "models", "training", "service"},
        "service": {"torch", "models", "training"},
        "models": {"service", "training"},
    }
    broken = sorted(
        f"{mod} imports {imp}"
        for mod, imps in everything.items()
        for imp in imps
        if top(imp) in forbidden.get(top(mod), ())
    )
    assert not broken, "\n".join(broken)
    assert {top(m) for m in everything} == set(PACKAGES)  # the walk found every package


def test_no_import_cycles():
    everything = source_graph()
    graph = {m: {i for i in imps if i in everything and i != m} for m, imps in everything.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
