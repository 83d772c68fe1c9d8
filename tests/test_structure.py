"""The package's shape: no import cycle and no import that runs up the layers, at module level or inside a
function; no module over 300 lines; the plugin imports no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


import pytest_quant

PACKAGE = Path(pytest_quant.__file__).parent
# Bottom to top: a module imports only from its own layer or the layers below (function-level imports too).
LAYERS = (
    ("pytest_quant", "pytest_quant.units", "pytest_quant.atomic", "pytest_quant.hookspecs", "pytest_quant.calibration"),
    ("pytest_quant.hardware", "pytest_quant.qcache"),
    ("pytest_quant.measure",),
    ("pytest_quant.models", "pytest_quant.prompts", "pytest_quant.tasks", "pytest_quant.lmeval_tasks"),
    ("pytest_quant.recipes",),
    ("pytest_quant.backends",),
    ("pytest_quant.options", "pytest_quant.option_parsers", "pytest_quant.cache_key", "pytest_quant.__main__"),
    ("pytest_quant.metrics",),
    ("pytest_quant.tolerances",),
    ("pytest_quant.gates",),
    ("pytest_quant.baselines", "pytest_quant.report"),
    ("pytest_quant.run",),
    ("pytest_quant.verdict", "pytest_quant.startup", "pytest_quant.workers"),
    ("pytest_quant.plugin",),
)
MAX_LINES = 300


def imports(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its body (functions included)."""
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        is_pkg = parts[-1] == "__init__"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    candidate = f"{module}.{alias.name}"
                    found = package.parent / candidate.replace(".", "/")
                    deps.add(candidate if found.with_suffix(".py").exists() or found.is_dir() else module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d.startswith(package.name + ".") or d == package.name} - {name}
    return graph


def layer(module: str) -> int:
    """The layer of ``module``: its longest listed prefix."""
    best, found = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), index
    if found is None:
        raise AssertionError(f"{module} is in no layer of tests/test_structure.py: place it")
    return found


def test_no_import_cycle_even_inside_functions() -> None:
    graph = imports(PACKAGE)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep in graph and not state.get(dep):
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module)


def test_no_import_runs_up_the_layers() -> None:
    upward = sorted(f"{module} (layer {layer(module)}) imports {dep} (layer {layer(dep)})"
                    for module, deps in imports(PACKAGE).items() for dep in deps if layer(dep) > layer(module))
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / "pytest_quant"
    (package / "gates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "gates" / "__init__.py").write_text("")
    (package / "units.py").write_text("def f():\n    from .gates import x\n")
    graph = imports(package)
    assert graph["pytest_quant.units"] == {"pytest_quant.gates"}
    assert layer("pytest_quant.gates") > layer("pytest_quant.units")


def test_no_module_over_300_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_importing_the_plugin_imports_no_heavy_library() -> None:
    code = ("import sys, pytest_quant.plugin; heavy = [m for m in ('torch', 'transformers', 'numpy', 'safetensors')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
