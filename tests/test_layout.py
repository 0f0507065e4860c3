"""The house rules the folders stand for: lower floors never import higher ones, and native code
(llama-cpp-python, onnxruntime, onnxruntime-genai, mlx, mlx-lm) is imported only under ``engines/``. Read
from the source with ``ast``; no import circle; a fact a table names is defined once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeslm"
# Floor of each top-level part of the package; a module may import only its own floor or lower.
# tasks (eval --task) drives the runner as the server does, so it sits on the runner's floor, and
# optimize, which measures task accuracy through it (--min-pass), beside them; tune, which probe-loads
# runners to fit the memory plan, too.
FLOORS = {
    "errors": 0, "config": 0, "units": 0, "framing": 0,
    "formats": 1, "speculation": 1, "store": 2, "sources": 3, "engines": 3, "access": 3,
    "runner": 5, "tasks": 5, "optimize": 5, "tune": 5, "serve": 6, "deploy": 6, "cli": 6, "__main__": 7,
}
NATIVE = ("llama_cpp", "onnxruntime", "onnxruntime_genai", "mlx", "mlx_lm")  # imported only under engines/
VERB = 4  # every other top-level module or package: the verbs (pull, quantize, evaluate, ...)


def floor(module: str) -> int:
    if module == "edgeslm":
        return 8  # the package's own __init__ offers the verbs lazily
    return FLOORS.get(module.split(".")[1], VERB) if module.startswith("edgeslm.") else -1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nodes(tree: ast.AST, typing_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; without ``typing_only``, those under ``if TYPE_CHECKING:`` left out
    (imports that never run: annotations only)."""
    if typing_only:
        return list(ast.walk(tree))
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
    return found


def imports(path: Path, *, typing_only: bool = True) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved; with
    ``typing_only=False`` only those that run (at module level or inside functions)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in _nodes(ast.parse(path.read_text()), typing_only):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found += [(node.lineno, f"{name}.{a.name}" if not node.module else name) for a in node.names]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_package() -> None:
    assert len(SOURCES) > 60 and ("edgeslm.engines.llamacpp.engine" in {module_name(p) for p in SOURCES})
    assert "edgeslm.errors" in {m for _, m in imports(PACKAGE / "engines" / "base.py")}  # ..errors, resolved
    assert "edgeslm.runner.messages" in {m for _, m in imports(PACKAGE / "runner" / "__init__.py")}  # .messages
    assert (
        floor("edgeslm.serve.app")
        > floor("edgeslm.runner.process")
        > floor("edgeslm.quantize")
        > floor("edgeslm.engines.llamacpp.engine")
        > floor("edgeslm.store.registry")
        > floor("edgeslm.formats.gguf_header")
        > floor("edgeslm.errors")
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_floor_imports_a_higher_one(path: Path) -> None:
    own = floor(module_name(path))
    higher = [(line, m) for line, m in imports(path) if floor(m) > own and not m.startswith(module_name(path))]
    own_part = (module_name(path).split(".") + [""])[1]
    higher = [(line, m) for line, m in higher if m.split(".")[1] != own_part]
    assert not higher, f"{path.relative_to(PACKAGE)} (floor {own}) imports {higher}"


def test_native_code_is_imported_only_under_engines() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line} {m}"
        for path in SOURCES
        if "engines" not in path.relative_to(PACKAGE).parts
        for line, m in imports(path)
        if m.split(".")[0] in NATIVE
    ]
    assert not found


BENCHMARKS = sorted((PACKAGE.parent / "benchmarks").glob("*.py"))
RUNS = {"run", "check_output", "check_call", "call"}  # subprocess's functions that wait for the child
WAITS = {"join", "wait", "communicate"}  # a thread's or a process's wait: bounded only with a timeout


def unbounded_waits(path: Path) -> list[str]:
    """Calls in ``path`` that could wait for ever: subprocess.run & co. without ``timeout=``, and
    ``.join()``/``.wait()``/``.communicate()`` with no argument."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, owner = node.func.attr, node.func.value
        keywords = {k.arg for k in node.keywords}
        if name in RUNS and isinstance(owner, ast.Name) and owner.id == "subprocess" and "timeout" not in keywords:
            found.append(f"{path.name}:{node.lineno} subprocess.{name} without timeout=")
        elif name in WAITS and not node.args and "timeout" not in keywords and not isinstance(owner, ast.Constant):
            found.append(f"{path.name}:{node.lineno} .{name}() without a timeout")
    return found


def test_the_benchmarks_wait_for_nothing_without_a_deadline() -> None:
    assert BENCHMARKS, "the walk found no benchmarks"
    found = [f for path in BENCHMARKS for f in unbounded_waits(path)]
    assert not found, "\n".join(found)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports when run (at module level or inside functions),
    each import resolved to the deepest module that exists (``from ..store import Store`` ->
    ``edgeslm.store``, whose ``__init__`` then imports on)."""
    modules = {module_name(p): p for p in SOURCES}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for _, name in imports(path, typing_only=False):
            target = resolve(name) if name.startswith("edgeslm") else None
            if target and target != module:
                graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            nxt = next((e for e in edges if e not in index or e in stack), None)
            if nxt is not None and nxt not in index:
                index[nxt] = low[nxt] = len(index)
                stack.append(nxt)
                work.append((nxt, iter(sorted(graph[nxt]))))
                continue
            if nxt is not None:
                low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    part.append(member)
                    if member == node:
                        break
                if len(part) > 1:
                    found.append(sorted(part))
    return found


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": {"g"}, "g": {"f"}}
    assert sorted(circles(graph)) == [["a", "b", "c"], ["f", "g"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    """No module imports, however indirectly, one that imports it back, at module level or inside
    a function (where a circle hides until the function runs); ``if TYPE_CHECKING:`` imports never
    run and are left out."""
    graph = import_graph()
    assert "edgeslm.store.records" in graph["edgeslm.store.registry"]
    assert not circles(graph), circles(graph)


# Facts a table names, each defined once (in the module given) and used by name everywhere else.
# A fact is found by its literal; for a number as common as 4096, only where the line speaks of it.
FACTS = {
    "the server's port": (8434, "config.py", None),
    "the default context": (4096, "config.py", re.compile(r"ctx|context|position", re.I)),
    "the default keep-alive": (300.0, "config.py", re.compile(r"keep", re.I)),
}


def fact_sites(value: float, pattern: re.Pattern[str] | None) -> list[str]:
    """Where ``value`` is written as a literal in the package (on a line matching ``pattern``)."""
    found = []
    for path in SOURCES:
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value == value:
                line = lines[node.lineno - 1]
                if pattern is None or pattern.search(line):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_the_fact_finder_finds_a_literal() -> None:
    assert any(site.startswith("config.py:") for site in fact_sites(8434, None))
    assert fact_sites(8434.5, None) == []


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_a_fact_is_defined_once(fact: str) -> None:
    value, home, pattern = FACTS[fact]
    sites = fact_sites(value, pattern)
    assert len(sites) == 1 and sites[0].startswith(f"{home}:"), f"{fact} ({value}) is written at {sites}"
