"""A wheel of the edgeslm that is running, for an image's build context (``deploy docker``).

Built from the installed package itself, source checkout or wheel alike: every file under the
package (no caches), and a ``.dist-info`` with the installed metadata, so its requirements — the
engine pinned (``llama-cpp-python==…``) — are exactly those this edgeslm was tested with (less
the packages that carry the builtin models' weights: an image's models come in its bundle). The
archive is reproducible: fixed timestamps, sorted entries, a RECORD of sha256 digests.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib import metadata
from pathlib import Path

from ..errors import OutputFileError
from ..sources.builtin import INSTALL
from ..version import __version__

DIST = "edgeslm"
STAMP = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: the same wheel for the same files
WHEEL = f"Wheel-Version: 1.0\nGenerator: edgeslm {__version__}\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
SKIP = ("__pycache__", ".pyc", ".pyo")


def wheel_name() -> str:
    return f"{DIST}-{__version__}-py3-none-any.whl"


def package_files() -> list[tuple[str, Path]]:
    """(path in the wheel, file) for every file of the package."""
    root = Path(__file__).resolve().parents[1]
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.endswith(SKIP) for part in path.relative_to(root).parts):
            out.append((f"{DIST}/{path.relative_to(root).as_posix()}", path))
    return out


def _metadata() -> str:
    """The installed METADATA (name, version, pinned requirements, extras)."""
    try:
        found = metadata.distribution(DIST)
        text = found.read_text("METADATA") or found.read_text("PKG-INFO")  # a wheel's, or a checkout's egg-info
    except metadata.PackageNotFoundError:
        text = None
    if not text:
        raise OutputFileError("edgeslm's metadata is not installed, so no wheel can be built; install edgeslm "
                              "with pip (pip install -e . in a checkout) and retry")
    weights = tuple(f"Requires-Dist: {name}" for name in INSTALL)  # an image's models come in its bundle
    headers = text.split("\n\n", 1)[0]  # without the long description (the README)
    return "".join(line for line in headers.splitlines(keepends=True) if not line.startswith(weights)) + "\n"


def _entry_points() -> str:
    return "[console_scripts]\nedgeslm = edgeslm.cli:main\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder: Path) -> Path:
    """Write the wheel into ``folder``; its path."""
    info = f"{DIST}-{__version__}.dist-info"
    entries = [(name, path.read_bytes()) for name, path in package_files()]
    entries += [(f"{info}/METADATA", _metadata().encode()), (f"{info}/WHEEL", WHEEL.encode()),
                (f"{info}/entry_points.txt", _entry_points().encode())]
    record = [_record_line(n, d) for n, d in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    out = folder / wheel_name()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            item = zipfile.ZipInfo(name, STAMP)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(item, data)
    return out
