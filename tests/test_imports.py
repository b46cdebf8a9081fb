"""The package surface: ``import memrope`` stays light, every public name resolves, src/ has no import circle."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import memrope

PACKAGE_ROOT = Path(memrope.__file__).resolve().parent
HEAVY_MODULES = ("memrope.models.wan", "memrope.adapters.upstream", "einops", "torch._dynamo")


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and return its stdout."""
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_import_memrope_loads_only_the_core() -> None:
    code = f"""
import json, sys
import memrope
loaded_by_import = [name for name in {HEAVY_MODULES!r} if name in sys.modules]
missing = [name for name in memrope.__all__ if not hasattr(memrope, name)]
print(json.dumps({{"loaded": loaded_by_import, "missing": missing, "dir": dir(memrope),
                   "attach_module": memrope.attach.__module__}}))
"""
    report = json.loads(run_python(code))
    assert report["loaded"] == [], f"import memrope pulled in {report['loaded']}"
    assert report["missing"] == []
    assert set(memrope.__all__) <= set(report["dir"])
    assert report["attach_module"].startswith("memrope.adapters")


def test_every_public_name_resolves_and_star_import_works() -> None:
    namespace: dict[str, object] = {}
    exec("from memrope import *", namespace)  # noqa: S102 - the star import under test
    assert set(memrope.__all__) <= set(namespace)
    from memrope.adapters import Attachment, attach

    assert memrope.attach is attach and memrope.Attachment is Attachment
    with pytest.raises(AttributeError, match="module 'memrope' has no attribute 'atach'"):
        memrope.atach  # type: ignore[attr-defined]  # noqa: B018


def test_version_comes_from_the_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memrope.__version__ == importlib.metadata.version("memrope")

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    pyproject = (PACKAGE_ROOT.parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{memrope._version()}"' in pyproject  # an uninstalled checkout reads pyproject.toml


# ---------------------------------------------------------------- import graph
def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports that never run."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level and inside functions, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if is_type_checking_block(node):
            pending.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(
    name: str, is_package: bool, statement: ast.Import | ast.ImportFrom, known: set[str]
) -> set[str]:
    """The ``memrope`` modules ``statement`` (in module ``name``) makes Python import."""
    if isinstance(statement, ast.Import):
        targets = {alias.name for alias in statement.names}
    else:
        base = statement.module or ""
        if statement.level:
            package = name if is_package else name.rpartition(".")[0]
            for _ in range(statement.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        targets = {f"{base}.{alias.name}" for alias in statement.names if f"{base}.{alias.name}" in known}
        targets.add(base)
    # Only the module named: importing a.b.c also runs the package a.b, but a package is always
    # initialised before its submodules, so a submodule reaching back to its package is no circle.
    return {target for target in targets if target in known and not name.startswith(f"{target}.")}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_ROOT.rglob("*.py"))
    names = {module_name(path): path for path in paths}
    known = set(names)
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for statement in runtime_imports(tree):
            edges |= imported_modules(name, is_package, statement, known)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_import_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "memrope.models.wan" in graph["memrope.devices"]  # module_layout's default, imported on use
    assert (
        "memrope.adapters" in graph["memrope"]
        and "memrope.policies.registry" in graph["memrope.policies.sink"]
    )
    assert "memrope.config" not in graph["memrope.policies.base"]  # a TYPE_CHECKING import never runs


def test_no_import_circle_between_memrope_modules() -> None:
    graph = import_graph()
    cycles = import_cycles(graph)
    described = [
        " <-> ".join(cycle) + ": " + "; ".join(f"{a} imports {sorted(graph[a] & set(cycle))}" for a in cycle)
        for cycle in cycles
    ]
    assert cycles == [], "import circles in src/memrope:\n" + "\n".join(described)


def test_the_library_never_imports_the_cli() -> None:
    """The CLI sits on top: it imports the library, no library module imports it."""
    graph = import_graph()
    importers = sorted(name for name, imported in graph.items() if "memrope.cli" in imported)
    assert importers == [], f"library modules import memrope.cli: {importers}"
    assert graph["memrope.errors"] == set()  # a leaf: the CLI and the library both import it
    assert {"memrope.errors"} <= graph["memrope.diagnostics.command"]


def test_import_memrope_diagnostics_does_not_load_the_cli() -> None:
    code = "import sys, memrope.diagnostics; print('memrope.cli' in sys.modules)"
    assert run_python(code).strip() == "False"


def test_the_cli_reports_the_errors_of_memrope_errors() -> None:
    """``memrope.cli`` re-uses the leaf module's exit codes and error class, so a ``CLIError`` raised by
    command code outside cli.py (``memrope plot-attention``) is reported like one raised in cli.py."""
    import memrope.cli
    import memrope.errors

    assert memrope.cli.CLIError is memrope.errors.CLIError
    for name in ("EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED"):
        assert getattr(memrope.cli, name) == getattr(memrope.errors, name), name
