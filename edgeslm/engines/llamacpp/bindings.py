"""llama.cpp's C API through llama-cpp-python's ctypes bindings, without its high-level package.

``import llama_cpp`` runs the package's ``__init__``, which imports the high-level ``Llama``
and everything it needs (chat formats, its grammar and cache code): memory and start-up time
that no edgeslm process uses, since the engine calls the C API directly. Here the package is
entered as a bare package, so only ``llama_cpp.llama_cpp`` (the ctypes functions) and its
helpers load. Anything else asked of ``llama_cpp`` later (``llama_cpp.Llama`` in a test)
loads the real high-level module on first use, so the package still behaves as installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from importlib import metadata
from typing import Any

from ...errors import EngineError


def _lazy_attribute(name: str) -> Any:
    """The bare package's ``__getattr__``: the C API first, then the high-level package's names."""
    if name.startswith("__"):
        raise AttributeError(name)
    for module in ("llama_cpp.llama_cpp", "llama_cpp.llama"):
        found = getattr(importlib.import_module(module), name, _MISSING)
        if found is not _MISSING:
            return found
    raise AttributeError(f"module 'llama_cpp' has no attribute {name!r}")


_MISSING = object()


def _enter_bare_package() -> None:
    if "llama_cpp" in sys.modules:  # imported already (whole or bare): use it as it is
        return
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("llama-cpp-python is not installed; run 'pip install llama-cpp-python==0.3.36'")
    package = types.ModuleType("llama_cpp", "llama-cpp-python, entered without its high-level package")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__, package.__file__, package.__package__ = spec, spec.origin, "llama_cpp"
    package.__version__ = metadata.version("llama_cpp_python")  # type: ignore[attr-defined]
    package.__getattr__ = _lazy_attribute  # type: ignore[method-assign]
    sys.modules["llama_cpp"] = package


def load() -> tuple[types.ModuleType, str]:
    """(the ctypes bindings module, llama-cpp-python's version)."""
    _enter_bare_package()
    bindings = importlib.import_module("llama_cpp.llama_cpp")
    return bindings, str(getattr(sys.modules["llama_cpp"], "__version__", "unknown"))


lc, VERSION = load()
