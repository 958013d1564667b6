"""The package's import graph has no cycles (module-level and function-local imports alike)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bnstudy"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _runtime_imports(tree: ast.AST):
    """Import nodes that can run: everywhere, function bodies included, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the bnstudy modules whose code runs when it imports (packages' ``__init__`` included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if _is_package(name, modules) else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg's __init__
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]  # `import bnstudy.x.y` of a name inside bnstudy.x
                if not target.startswith("bnstudy"):
                    continue
                if target != name:
                    graph[name].add(target)
                # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is already inside them
                parts = target.split(".")
                for i in range(1, len(parts)):
                    dep = ".".join(parts[:i])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_local_and_package_imports():
    graph = import_graph()
    assert "bnstudy.train.build" in graph["bnstudy.train.loop"]
    assert "bnstudy.norm" in graph["bnstudy.config"]  # a function-local import counts
    assert "bnstudy.train" in graph["bnstudy.cli.job"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


# Layers, lowest first: a module imports only its own layer and those below. Entry points
# (command-line programs) may import anything; nothing but an entry point imports one.
LAYERS = [
    ("bnstudy.errors", "bnstudy.fmt", "bnstudy.devices", "bnstudy.sigint"),
    ("bnstudy.norm", "bnstudy.plugins", "bnstudy.provenance"),  # a run's code includes the plugins it names
    ("bnstudy.config",),
    ("bnstudy.runs", "bnstudy.archive", "bnstudy.archive_write", "bnstudy.sweep_log", "bnstudy.trackers"),
    ("bnstudy.data", "bnstudy.models"),
    ("bnstudy.flops", "bnstudy.threads", "bnstudy.checks"),
    ("bnstudy.train", "bnstudy.analysis"),
]  # fmt: skip
SIDE_BY_SIDE = {("bnstudy.train", "bnstudy.analysis"), ("bnstudy.analysis", "bnstudy.train")}  # neither imports the other
ENTRY_POINTS = (
    "bnstudy.cli", "bnstudy.runs_cli", "bnstudy.bench", "bnstudy.reproduce", "bnstudy.transfer", "bnstudy.startup",
    "bnstudy.search",
    "bnstudy.train.__main__",
)  # fmt: skip


def _place(module: str) -> tuple[int, str] | None:
    """(layer, group) of a module: entry points above every layer; None for a module no layer lists."""

    def within(prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    if any(within(p) for p in ENTRY_POINTS) or module.endswith(".__main__"):
        return len(LAYERS), "entry"
    for i, layer in enumerate(LAYERS):
        for group in layer:
            if within(group):
                return i, group
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in import_graph() if m != "bnstudy" and _place(m) is None)
    assert not unplaced, f"add {', '.join(unplaced)} to LAYERS or ENTRY_POINTS in tests/test_imports.py"


def test_no_upward_imports():
    bad = []
    for module, deps in import_graph().items():
        here = _place(module)
        for dep in deps:
            there = _place(dep)
            if here is None or there is None or dep == "bnstudy" or here[1] == "entry":
                continue
            if there[0] > here[0] or (here[1], there[1]) in SIDE_BY_SIDE:
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports from a higher layer or a side-by-side package: " + ", ".join(sorted(bad))
