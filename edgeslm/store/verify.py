"""``edgeslm verify``: re-hash every blob and check every manifest against its blob."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import EdgeslmError
from ..formats.gguf_header import read_gguf_header
from .atomic import sha256_file
from .layers import DIGEST
from .records import Manifest, Problem, Progress, VerifyReport

if TYPE_CHECKING:
    from .registry import Store


def verify_store(store: Store, progress: Progress | None = None) -> VerifyReport:
    swept = store.sweep()
    problems: list[Problem] = []
    manifests = _check_manifest_files(store, problems)
    by_digest: dict[str, list[Manifest]] = {}
    for m in manifests:
        for digest in m.blob_sizes():
            by_digest.setdefault(digest, []).append(m)
    checked = 0
    for path in sorted(store.blobs_dir.iterdir()):
        if not DIGEST.match(path.name):
            problems.append(Problem(str(path), "unexpected file among blobs; move it out of the store"))
            continue
        checked += 1
        problems.extend(_check_blob(store, path.name, by_digest.get(path.name, []), progress))
    for digest, owners in by_digest.items():
        if not store.blob_path(digest).exists():
            for m in owners:
                problems.append(Problem(str(m.name), f"its blob {digest} is missing; pull or import it again"))
    for m in manifests:
        if m.layers and all(store.blob_path(d).exists() for d in m.blob_sizes()):
            problems.extend(_check_folder(store, m))
    return VerifyReport(checked, len(manifests), tuple(problems), swept)


def _check_manifest_files(store: Store, problems: list[Problem]) -> list[Manifest]:
    good = []
    for path in store._manifest_files():
        try:
            manifest = Manifest.from_json(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(Problem(str(path), f"unreadable manifest ({exc}); remove it or re-import the model"))
            continue
        if store.manifest_path(manifest.name) != path:
            problems.append(Problem(str(path), f"manifest names {manifest.name} but lies elsewhere"))
            continue
        good.append(manifest)
    return good


def _check_blob(store: Store, digest: str, owners: list[Manifest], progress: Progress | None) -> list[Problem]:
    path = store.blob_path(digest)
    names = ", ".join(str(m.name) for m in owners) or "no model"
    actual = "sha256-" + sha256_file(path, progress)
    if actual != digest:
        return [
            Problem(
                digest,
                f"content hashes to {actual} (used by {names}); the file is corrupt: "
                "pull or import the model again to repair it",
            )
        ]
    problems = []
    size = path.stat().st_size
    for m in owners:
        if m.blob_sizes()[digest] != size:
            problems.append(Problem(str(m.name), f"manifest says {m.blob_sizes()[digest]:,} bytes, blob has {size:,}"))
    if any(not m.layers for m in owners):  # a GGUF model's blob: its header must still validate
        try:
            read_gguf_header(path, label=digest)
        except EdgeslmError as exc:
            problems.append(Problem(digest, str(exc)))
    return problems


def _check_folder(store: Store, manifest: Manifest) -> list[Problem]:
    """A folder model's files, checked together as its format's validator checks an import."""
    from ..formats.folder_checks import check_folder

    try:
        check_folder(manifest.format, store.model_path(manifest))
    except EdgeslmError as exc:
        return [Problem(str(manifest.name), str(exc))]
    return []
