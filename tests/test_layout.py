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


LAYERS = {  # a layer may import its own and lower layers only (foundations: the top-level modules)
    "foundation": 0, "models": 1, "coding": 1, "optim": 2, "training": 3, "analysis": 4, "workbench": 5,
}
# Known upward edges, each for a reason: config validates the names owned by the layers it configures
# (model, objective and schedule registries); the command-line glue sits on top of everything;
# datasets lists images with the training data's reader; the engine logs PSNR with the metrics
# module (a leaf: it imports nothing from lic_core).
ALLOWED = {("lic_core.config", "models"), ("lic_core.config", "optim"), ("lic_core.config", "training"),
           ("lic_core.cli", "*"), ("lic_core.__main__", "*"), ("lic_core.datasets", "training"),
           ("lic_core.training.engine", "lic_core.analysis.metrics")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else "foundation"


def test_layers_import_downward_only():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    upward = []
    for m, p in sorted(files.items()):
        for d in sorted(d for d in imports(p, set(files)) if files[d].name != "__init__.py"):
            allowed = {(m, layer(d)), (m, d), (m, "*")} & ALLOWED
            if LAYERS[layer(d)] > LAYERS[layer(m)] and not allowed:
                upward.append(f"{m} -> {d}")
    assert upward == []


def test_the_library_knows_no_study():
    """Studies use the library; nothing in lic_core imports them or names a study's files."""
    found = []
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "studies" or n.startswith("studies.") for n in names):
                found.append(f"{p.relative_to(REPO)} imports {names}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value == "studies" or "studies/" in node.value):
                found.append(f"{p.relative_to(REPO)} names {node.value[:60]!r}")
    assert found == []
