"""The house in rooms: every module sits in a room (subpackage) by concern, and imports only from its own room or
the rooms below it, so the folder listing reads as the pipeline and no import circle can form. Function-level
imports count: a lazy import from above is still a circle in the design."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# lowest first; a module may import from its own layer and any layer listed before it
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "runtime", "console"),  # the errors and exit codes, process set-up, the console
    ("io",),
    ("config", "config_layers"),  # the typed sections, and the layers (recipe, file, --set) they are read from
    ("decision",),
    ("model",),
    ("data",),
    ("render",),
    ("inference",),
    ("train",),
    ("scoring",),
    ("clinic",),
    ("query", "doctor", "demo", "cli", "__main__"),  # the public readers and the command line
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
PACKAGE = REPO / "skinray"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[dotted.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """The skinray modules ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "skinray":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "skinray"}
    return found


GRAPH = {module: _imports(path) - {module} for module, path in MODULES.items()}


def test_every_module_sits_in_a_known_room():
    assert {_room(m) for m in MODULES} <= set(RANK), {_room(m) for m in MODULES} - set(RANK)
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == sorted(f"{n}.py" for names in LAYERS for n in names if (PACKAGE / f"{n}.py").exists())


def test_no_module_imports_from_a_room_above_it():
    upward = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                    if d in MODULES and RANK[_room(d)] > RANK[_room(m)])
    assert not upward, upward


def test_no_import_circle():
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH[module] & GRAPH.keys()):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The checks above can fail: a decision module reading the scores table is upward, two modules importing each
    other are a circle."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from skinray.scoring import table\n    from skinray.decision.metrics import x\n")
    assert _imports(bad) == {"skinray.scoring.table", "skinray.decision.metrics"}
    assert RANK[_room("skinray.scoring.table")] > RANK[_room("skinray.decision.metrics")]


def _bound_modules(tree: ast.AST) -> dict[str, str]:
    """The names a file binds to skinray modules (``from skinray.decision import metrics as m`` → m)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "skinray":
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def test_every_module_attribute_read_exists():
    """``metrics.as_labels`` after ``as_labels`` moved to another module is an AttributeError only when that line
    runs; ruff does not see it. Every ``module.name`` read anywhere in skinray/, tests/, jobs/ and bench/ resolves."""
    import importlib

    missing = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "jobs").glob("*.py"),
                 *(REPO / "bench").glob("*.py")]:
        tree = ast.parse(path.read_text())
        bound = _bound_modules(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name)
                    and node.value.id in bound
                    and not hasattr(importlib.import_module(bound[node.value.id]), node.attr)):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not missing, missing


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_modules_and_functions_read_as_tables_of_contents():
    """No module over 400 lines and no function over 80: a stage reads as a list of named steps."""
    long = []
    for module, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {size} lines")
    assert not long, long
