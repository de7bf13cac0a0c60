"""The package layout shows the data flow: no import cycles, commands import the rest and nothing imports them,
and functions stay short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tl_cli"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """tl_cli modules `name` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tl_cli"):
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
            if node.module in known and not any(f"{node.module}.{a.name}" in known for a in node.names):
                found.add(node.module)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, tree, known) for name, tree in modules.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_imports_the_commands() -> None:
    graph = _graph()
    offenders = {m: sorted(d for d in deps if d.startswith("tl_cli.commands.")) for m, deps in graph.items()}
    # cli.py dispatches to them by name (importlib), so it needs no import either
    offenders = {m: d for m, d in offenders.items() if d and not m.startswith("tl_cli.commands.")}
    assert not offenders, offenders
    commands = {m for m in graph if m.startswith("tl_cli.commands.")} - {"tl_cli.commands"}
    assert commands >= {f"tl_cli.commands.{c}" for c in ("train", "evaluate", "predict", "export", "report")}
    for command in commands:  # and commands do not lean on each other either
        assert not {d for d in graph[command] if d.startswith("tl_cli.commands.")}, command


def test_functions_are_short_or_say_why() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                body = "\n".join(source[node.lineno - 1 : node.end_lineno])
                if length > MAX_FUNCTION_LINES and "# long:" not in body:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_test_modules_share_only_conftest() -> None:
    """Test modules import shared helpers from tests/conftest.py only, never from another test module, and the
    smoke config is defined there once."""
    tests = PACKAGE.parent / "tests"
    offenders = []
    for path in sorted(tests.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                if node.module != "tests.conftest":
                    offenders.append(f"{path.relative_to(tests)} imports {node.module}")
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SMOKE" for t in node.targets):
                offenders.append(f"{path.relative_to(tests)} defines its own SMOKE")
    assert not offenders, offenders


BASE = {"tl_cli", "tl_cli.errors", "tl_cli.extras", "tl_cli.ranks", "tl_cli.hardware", "tl_cli.rundir"}
# docs/architecture.md: what each layer must not import
FORBIDDEN = {
    "base": ("data", "transfer", "run", "reporting", "commands", "cli"),
    "data": ("config", "transfer", "run", "reporting", "commands", "cli"),
    "config": ("transfer", "run", "reporting", "commands", "cli"),
    "transfer": ("run", "reporting", "commands", "cli"),
    "run": ("reporting", "commands", "cli"),
    "reporting": ("run", "commands", "cli"),
}


def _layer(module: str) -> str:
    """base, data, config, transfer, run, reporting, commands or cli (cli.py and __main__)."""
    if module in BASE:
        return "base"
    part = module.split(".")[1]
    return "cli" if part in ("cli", "__main__") else part


def test_each_layer_imports_only_what_docs_architecture_allows() -> None:
    graph = _graph()
    offenders = [
        f"{module} imports {dep}"
        for module, deps in sorted(graph.items())
        for dep in sorted(deps)
        if _layer(dep) in FORBIDDEN.get(_layer(module), ())
    ]
    assert not offenders, offenders
    assert "config" not in FORBIDDEN["base"]  # errors.py reads the schema's keys on the error path only


def test_the_package_imports_neither_study_benchmarks_nor_tests() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{name} imports {n}" for n in names if n.split(".")[0] in ("study", "benchmarks", "tests")]
    assert not offenders, offenders


def _writes_to_imported_modules(tree: ast.Module, known: set[str]) -> list[str]:
    """`other.name = value` (or setattr(other, ...)) where `other` is a tlcli module the file imported."""
    imported = set()  # local names bound to tl_cli modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("tl_cli")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_cli"):
            imported |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in known}
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets = [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else targets
        found += [
            f"{node.lineno}: sets {t.value.id}.{t.attr}"
            for t in targets
            if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) in imported
        ]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
            if getattr(node.args[0], "id", None) in imported:
                found.append(f"{node.lineno}: setattr on {node.args[0].id}")
    return found


def test_no_module_writes_another_modules_globals() -> None:
    modules = _modules()
    known = set(modules)
    offenders = {name: found for name, tree in modules.items() if (found := _writes_to_imported_modules(tree, known))}
    assert not offenders, offenders
    # what run/sweep_callback.py did before it kept its own state: caught
    before = "def on_multirun_start(self, config):\n    from tl_cli import cli\n\n    cli._sweep_dir = 'x'\n"
    assert _writes_to_imported_modules(ast.parse(before), known) == ["4: sets cli._sweep_dir"]
