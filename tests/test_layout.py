"""The house plan, measured: kdstore's modules import each other without circles and only at
module level, and the training loop has no function over 60 lines."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdstore"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The kdstore modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("kdstore")]
    if node.level:
        base = module.split(".")[: len(module.split(".")) - node.level + (1 if module.endswith("__init__") else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("kdstore"):
        return []
    names = [f"{target}.{a.name}" for a in node.names]
    return [n if (PACKAGE.parent / (n.replace(".", "/") + ".py")).is_file() else target for n in names]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> kdstore modules it imports at module level; and every import inside a function."""
    graph, inner = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text())
        graph[module] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = set(_resolve(module, node)) - {module, "kdstore"}
            if node.col_offset == 0:
                graph[module] |= targets
            elif targets and not _in_type_checking(tree, node):
                inner.append(f"{module}:{node.lineno} imports {', '.join(sorted(targets))} inside a function")
    return graph, inner


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n.test) and node in ast.walk(n) for n in tree.body)


def test_module_imports_form_no_circle():
    graph, _ = _graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(n):] + [n]) if n in path else n)
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "kdstore.cli.main" in graph and "kdstore.store" in graph


def test_no_import_inside_a_function_for_layering():
    _, inner = _graph()
    assert inner == []


def test_the_library_never_imports_its_command_line():
    graph, _ = _graph()
    offenders = [m for m, deps in graph.items() if not m.startswith(("kdstore.cli", "kdstore.__main__")) and any(d.startswith("kdstore.cli") for d in deps)]
    assert offenders == []


@pytest.mark.parametrize("module", ["train.py", "step.py"])
def test_training_loop_functions_are_short(module):
    tree = ast.parse((PACKAGE / module).read_text())
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert long == []
