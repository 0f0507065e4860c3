"""The house rules the folders stand for: lower floors never import higher ones, and native code
(llama-cpp-python, onnxruntime, onnxruntime-genai, mlx, mlx-lm) is imported only under ``engines/``. Read
from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeslm"
# Floor of each top-level part of the package; a module may import only its own floor or lower.
FLOORS = {
    "errors": 0, "config": 0, "units": 0, "framing": 0,
    "formats": 1, "speculation": 1, "store": 2, "sources": 3, "engines": 3,
    "runner": 5, "serve": 6, "deploy": 6, "cli": 6, "__main__": 7,
}  # fmt: skip
NATIVE = ("llama_cpp", "onnxruntime", "onnxruntime_genai", "mlx", "mlx_lm")  # imported only under engines/
VERB = 4  # every other top-level module or package: the verbs (pull, quantize, evaluate, ...)


def floor(module: str) -> int:
    if module == "edgeslm":
        return 8  # the package's own __init__ offers the verbs lazily
    return FLOORS.get(module.split(".")[1], VERB) if module.startswith("edgeslm.") else -1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found += [(node.lineno, f"{name}.{a.name}" if not node.module else name) for a in node.names]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_package() -> None:
    assert len(SOURCES) > 60 and ("edgeslm.engines.llamacpp" in {module_name(p) for p in SOURCES})
    assert "edgeslm.errors" in {m for _, m in imports(PACKAGE / "engines" / "base.py")}  # ..errors, resolved
    assert "edgeslm.runner.messages" in {m for _, m in imports(PACKAGE / "runner" / "__init__.py")}  # .messages
    assert (
        floor("edgeslm.serve.app")
        > floor("edgeslm.runner.process")
        > floor("edgeslm.quantize")
        > floor("edgeslm.engines.llamacpp")
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
