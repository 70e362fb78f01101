"""Rules of the house, checked on the tree itself (shared/DESIGN.md): every module imports without the optional
backends (Polygraphy's tests/test_deps.py idea), no import cycles (imports inside functions included), no module
in edgekit/ over 450 lines."""
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edgekit"
OPTIONAL = ("openvino", "tensorrt", "paramiko", "transformers", "datasets")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


# ---------------------------------------------------------------- imports without the optional backends

_BLOCKED_IMPORTS = r"""
import importlib, json, sys, traceback

BLOCKED = set(sys.argv[1].split(","))


class Blocker:
    # a meta_path finder placed first: the blocked libraries (and their submodules) look not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
failed = {}
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - report every module that fails, not just the first
        failed[name] = traceback.format_exc(limit=-3)
from edgekit.backends.base import get_backend

backends = {b: list(get_backend(b).available()) for b in ("openvino", "tensorrt")}
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"failed": failed, "backends": backends, "leaked": leaked}))
"""


def test_every_module_imports_without_the_optional_backends():
    """A clean interpreter in which openvino, tensorrt, paramiko, transformers and datasets cannot be imported:
    every edgekit module still imports (optional libraries are imported at the point of use), and the backends
    that need them say they are unavailable instead of crashing."""
    names = [n for n in _modules() if not n.endswith("__main__")]  # __main__ runs the CLI
    res = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORTS, ",".join(OPTIONAL), ",".join(names)], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert not got["failed"], "modules that need an optional library at import time:\n" + "\n".join(
        f"{n}:\n{tb}" for n, tb in got["failed"].items())
    assert not got["leaked"], f"optional libraries imported anyway: {got['leaked']}"
    for backend, (ok, why) in got["backends"].items():
        assert ok is False and why, f"{backend} claims to be available without its library: {why!r}"


# ---------------------------------------------------------------- the import graph

def _under_type_checking(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """module -> the edgekit modules it imports, at any depth of its code (module level, functions, methods).
    `from a.b import c` counts as an import of a.b.c where that is a module, else of a.b; relative imports are
    resolved against the importing module's package. Imports only a type checker runs are left out, and so is
    `import edgekit` itself (for __version__): Python has imported the package root before any of its modules runs,
    so it orders nothing, and counting it would put everything the root's public API reaches into one loop."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        deps = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:  # `import edgekit.x.y.z` where z is a name, not a module
                    t = t.rpartition(".")[0]
                if t in modules and t not in (name, PACKAGE.name):
                    deps.add(t)
        graph[name] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules (Tarjan), each as one concrete cycle through it."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_a_cycle(group, graph) for group in groups]


def _a_cycle(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path back to group[0] from itself, within the group: a readable witness of the loop."""
    start, members = group[0], set(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & members):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return group


def test_import_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The cycle finder itself, on a graph with a loop hidden in a function and one made by a relative import."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"x": {"y"}, "y": set()}) == []
    real = import_graph()
    assert "edgekit.errors" in real["edgekit.cli"]  # module level
    assert "edgekit.pipeline" in real["edgekit.cli"]  # inside a command function


def test_no_module_imports_a_module_that_imports_it_back():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (imports inside functions included):\n" + "\n".join(" -> ".join(c) for c in cycles)


# ---------------------------------------------------------------- size

def test_no_module_in_edgekit_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job (at most {MAX_LINES} lines a module): {long}"
