"""The package's shape: no import cycles between its modules (lazy imports inside functions
included), and the public API names mean what they say."""
from __future__ import annotations

import ast
from pathlib import Path

import lic_core
from lic_core.paths import REPO

PACKAGE = REPO / "lic_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The lic_core modules ``path`` imports, at top level or inside functions."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            while n and n not in modules:
                n = n.rsplit(".", 1)[0] if "." in n else ""
            if n and n != me and not me.startswith(n + "."):  # a package's own __init__ is not a dependency
                found.add(n)
    return found


def cycles() -> list[list[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: imports(p, set(files)) for m, p in files.items()}
    graph = {m: {d for d in deps if not files[d].name == "__init__.py"} for m, deps in graph.items()}
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycles():
    assert cycles() == []


def test_api_names_are_the_functions_they_advertise():
    import lic_core.analysis.evaluation  # noqa: F401  (submodules imported first must not shadow the API)
    import lic_core.training.engine  # noqa: F401

    for name in lic_core.__all__:
        obj = getattr(lic_core, name)
        assert callable(obj) and not isinstance(obj, type(lic_core)), name
    from lic_core import evaluate, train

    assert train.__module__ == "lic_core.training.engine" and evaluate.__module__ == "lic_core.analysis.evaluation"
