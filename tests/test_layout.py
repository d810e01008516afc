"""The house plan, measured: subpackages in a declared layer order that no import climbs
(`TYPE_CHECKING` imports included), no import circles, no imports inside functions, a thin
top level, and no function over 60 lines or 8 parameters anywhere in the library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdstore"

# Lowest first: a module may import from its own layer and the layers before it, never after.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared", ("kdstore.errors", "kdstore.version", "kdstore.indices", "kdstore.options")),
    ("runtime", ("kdstore.runtime",)),  # transfers, precision, torchrun, devices, hashing, console
    ("method", ("kdstore.method",)),  # the pure maths of the paper
    ("data", ("kdstore.data",)),  # datasets, augmentation, .beton files
    ("models", ("kdstore.models",)),  # timm models, checkpoints, teachers
    ("store", ("kdstore.store",)),  # teacher.h5 + .betons: open, write, rows, views, merge
    ("passes", ("kdstore.passes",)),  # a model over a .beton's images: the teacher's, the scorer's, eval's
    ("cache", ("kdstore.cache",)),  # the writer: the teacher's passes into a store
    ("loader", ("kdstore.loader",)),  # a store in any training loop: batches, targets, lambda, kd_loss
    ("train", ("kdstore.train",)),  # the training loop and its commands
    ("report", ("kdstore.report",)),  # sweeps, tables, figures
    ("demo", ("kdstore.demo",)),  # the whole method on the digits data
    ("integrations", ("kdstore.integrations",)),  # adapters to timm's tasks and Lightning (not imported by kdstore)
    ("cli", ("kdstore.cli", "kdstore.__main__")),  # the command line
    ("api", ("kdstore",)),  # the package itself: the public API it exports
]
TOP_LEVEL_FILES = 6

# Functions allowed past the size limits, each with its reason (empty: none is).
LONG_FUNCTIONS: dict[str, str] = {}
MAX_LINES, MAX_PARAMS = 60, 8


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = PACKAGE.parent / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The kdstore modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "kdstore"]
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "kdstore":
        return []
    return [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]


def _layer(module: str) -> int:
    best, index = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    return index


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> kdstore modules it imports (module level and TYPE_CHECKING); every import inside a function."""
    graph: dict[str, set[str]] = {}
    inner: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text())
        graph[module] = set()
        checking = {
            id(n)
            for top in tree.body
            if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.dump(top.test)
            for n in ast.walk(top)
        }
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = set(_resolve(module, path, node)) - {module}
            if node.col_offset == 0 or id(node) in checking:
                graph[module] |= targets
            elif targets:
                inner.append(f"{module}:{node.lineno} imports {', '.join(sorted(targets))} inside a function")
    return graph, inner


def test_every_module_has_a_layer():
    graph, _ = _graph()
    assert [m for m in graph if _layer(m) < 0] == []


def test_no_import_goes_up_the_layers():
    graph, _ = _graph()
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert upward == []


def test_the_store_imports_nothing_from_training():
    graph, _ = _graph()
    assert [
        (m, d)
        for m, deps in graph.items()
        if m.startswith("kdstore.store")
        for d in deps
        if d.startswith(("kdstore.train", "kdstore.cache", "kdstore.report", "kdstore.cli"))
    ] == []


def test_module_imports_form_no_circle():
    graph, _ = _graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(n) :] + [n]) if n in path else n)
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "kdstore.cli.main" in graph and "kdstore.store.format" in graph


def test_the_layer_check_sees_a_type_checking_import(tmp_path):
    """The checks above read `if TYPE_CHECKING:` imports: a planted one is found."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kdstore.train.config import TrainConfig\n"
    )
    node = tree.body[1].body[0]
    assert _resolve("kdstore.store.format", PACKAGE / "store" / "format.py", node) == ["kdstore.train.config"]
    assert _layer("kdstore.train.config") > _layer("kdstore.store.format")


def test_no_import_inside_a_function_for_layering():
    _, inner = _graph()
    assert inner == []


def test_the_library_never_imports_its_command_line():
    graph, _ = _graph()
    offenders = [
        m
        for m, deps in graph.items()
        if not m.startswith(("kdstore.cli", "kdstore.__main__")) and any(d.startswith("kdstore.cli") for d in deps)
    ]
    assert offenders == []


def test_the_top_level_is_thin():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(files) <= TOP_LEVEL_FILES, files


def _functions() -> list[tuple[str, int, int]]:
    """(module.qualified name, lines, parameters without self/cls) of every function in the library."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = child.args
                    params = (
                        [*a.posonlyargs, *a.args, *a.kwonlyargs]
                        + ([a.vararg] if a.vararg else [])
                        + ([a.kwarg] if a.kwarg else [])
                    )
                    n = len([p for p in params if p.arg not in ("self", "cls")])
                    out.append((f"{module}.{prefix}{child.name}", child.end_lineno - child.lineno + 1, n))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")
                else:
                    walk(child, prefix)

        walk(ast.parse(path.read_text()), "")
    return out


def test_functions_are_short_with_few_parameters():
    too_big = [
        f"{name}: {lines} lines, {params} parameters"
        for name, lines, params in _functions()
        if (lines > MAX_LINES or params > MAX_PARAMS) and name not in LONG_FUNCTIONS
    ]
    assert too_big == []


def test_the_size_check_reaches_every_module():
    names = {name.rsplit(".", 1)[0] for name, _, _ in _functions()}
    assert {"kdstore.train.loop", "kdstore.cache.write", "kdstore.store.format", "kdstore.cli.main"} <= names
    assert all(reason.strip() for reason in LONG_FUNCTIONS.values())


def test_the_reader_never_imports_the_writer():
    """The loader (and train, which reads stores through it) stand beside the cache over the
    store: nothing under them imports kdstore.cache; the model passes they share are below both."""
    graph, _ = _graph()
    assert [
        (m, d)
        for m, deps in graph.items()
        if m.startswith(("kdstore.loader", "kdstore.train"))
        for d in deps
        if d == "kdstore.cache" or d.startswith("kdstore.cache.")
    ] == []


@pytest.mark.slow  # a subprocess importing torch (the fast tier runs none)
def test_importing_the_loader_loads_no_writer_module():
    import subprocess
    import sys

    code = "import sys, kdstore.loader; print(sorted(m for m in sys.modules if m.startswith('kdstore.cache')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import kdstore; print(kdstore.CacheConfig.__module__, kdstore.cache.run.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["kdstore.cache.config", "kdstore.cache.write"]  # named, the writer loads


def _written_doc(obj: object) -> str:
    """The docstring written in the source (a dataclass without one gets a generated one)."""
    import inspect

    doc = inspect.getdoc(obj) or ""
    generated = isinstance(obj, type) and doc.startswith(f"{obj.__name__}(")
    return "" if generated else doc


def test_every_public_name_has_a_written_docstring():
    import kdstore

    assert [
        name for name in kdstore.__all__ if name != "__version__" and not _written_doc(getattr(kdstore, name))
    ] == []


def test_every_exported_command_config_has_a_run_of_one_config():
    """Every exported *Config of a command is run by an exported module's `run(cfg) -> result`
    (LoaderConfig is the loader's, not a command's)."""
    import inspect

    import kdstore

    configs = {n for n in kdstore.__all__ if n.endswith("Config") and n != "LoaderConfig"}
    runs = {}
    for name in kdstore.__all__:
        module = getattr(kdstore, name)
        if inspect.ismodule(module) and callable(getattr(module, "run", None)):
            params = list(inspect.signature(module.run).parameters.values())
            required = [p for p in params if p.default is inspect.Parameter.empty and p.kind != p.KEYWORD_ONLY]
            assert len(required) == 1, f"kdstore.{name}.run takes {len(required)} positional arguments"
            runs[str(required[0].annotation).split(".")[-1]] = name
    assert configs <= set(runs), sorted(configs - set(runs))


def test_the_drawing_of_the_layers_in_the_docs_is_the_layer_list():
    """docs/development.md draws the house (a mermaid flowchart whose node ids are the layers'
    names): it shows every layer, each arrow climbs, and no path leads from the writer (cache) to
    the reader (loader, train), which stand side by side over passes."""
    import re

    text = (PACKAGE.parent / "docs" / "development.md").read_text()
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    edges = re.findall(r"^\s*(\w+)(?:\[[^\]]*\])? --> (\w+)", block, flags=re.M)
    order = [name for name, _ in LAYERS]
    assert {n for e in edges for n in e} == set(order)
    assert [e for e in edges if order.index(e[0]) >= order.index(e[1])] == []

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for a, b in edges:
                if a == node and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    assert not {"loader", "train"} & reachable("cache")
    assert {"cache", "loader"} <= reachable("passes")
