"""``edgeslm quantize``: stored model -> stored variants, through llama.cpp's own quantizer.

Each variant is produced by ``llama_model_quantize`` (the function behind ``llama-quantize``)
straight into a locked temp file in the store, validated, and published as ``NAME:TYPE`` with
its lineage: parent digest and type, the type asked for, the options, llama.cpp's version. The
manifest's type mix records what llama.cpp actually produced, which differs from the request
when rows are not a multiple of the type's block size (K-quants need 256).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from gguf.constants import GGMLQuantizationType

from .errors import InvalidParameterError
from .formats.gguf_header import read_gguf_header
from .formats.quant_types import QuantizeOptions, QuantType, parse_ggml_type
from .formats.ternary import check_ternary
from .store import ModelName, Store
from .store.records import Manifest

log = logging.getLogger(__name__)
MATERIAL_SHARE = 0.5  # warn when under half the parameters got the requested main type


def parse_tensor_type(text: str) -> tuple[str, GGMLQuantizationType]:
    """'attn_v=q6_k' -> ('attn_v', Q6_K); the pattern must be a valid regex."""
    pattern, sep, type_name = text.rpartition("=")
    if not sep or not pattern:
        raise InvalidParameterError(
            f"tensor_type {text!r}: write PATTERN=TYPE, e.g. 'attn_v=q6_k'", params="tensor_type"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidParameterError(
            f"tensor_type {text!r}: {pattern!r} is not a valid regex ({exc})", params="tensor_type"
        ) from None
    return pattern, parse_ggml_type(type_name)


@dataclass(frozen=True)
class VariantResult:
    quant_type: QuantType
    manifest: Manifest
    built: bool  # False: an existing variant was kept (use force to rebuild)
    warnings: tuple[str, ...] = field(default=())


def is_quantized(parent: Manifest) -> bool:
    """Whether more than 1 % of the parameters are in a quantized (not F32/F16/BF16) type."""
    return any(
        s.ggml_type not in ("F32", "F16", "BF16") and s.n_params > 0.01 * parent.info.n_params
        for s in parent.info.type_mix
    )


def check_request(store: Store, parent: Manifest, qtype: QuantType, options: QuantizeOptions) -> list[str]:
    """Refuse what cannot work; return warnings for what works with caveats."""
    store.gguf_path(parent, "quantize")
    warnings = []
    if qtype.needs_imatrix and options.imatrix is None:
        raise InvalidParameterError(
            f"{qtype.name} needs an importance matrix, as llama-quantize requires: calibrate first (edgeslm "
            f"calibrate {parent.name}) and give --imatrix {parent.name}, or quantize with --calibrate TEXT",
            params="imatrix",
        )
    if is_quantized(parent):
        source = parent.info.file_type or parent.info.main_type
        if not options.allow_requantize and not qtype.unquantized:
            raise InvalidParameterError(
                f"{parent.name} is already quantized ({source}); quantizing it again compounds the error. "
                "Set allow_requantize to do it anyway, or start from an F16/F32 model",
                params="allow_requantize",
            )
        warnings.append(
            f"source is already {source}: {qtype.name} is made from dequantized weights, "
            "so its error adds to the source's"
        )
    if options.imatrix is not None and (options.tensor_types or options.token_embedding_type
                                        or options.output_tensor_type):
        _check_overrides_covered(store, parent, options)
    if qtype.ternary:
        warnings.extend(_ternary_check(store, parent, qtype, options))
    if not qtype.unquantized and not _any_row_fits(store, parent, qtype):
        raise InvalidParameterError(
            f"no weight matrix of {parent.name} has rows divisible by {qtype.name}'s block size "
            f"{qtype.block_size}: every tensor would fall back to another type; choose a type with "
            "32-element blocks (Q4_0, Q5_1, Q8_0...)"
        )
    return warnings


def _check_overrides_covered(store: Store, parent: Manifest, options: QuantizeOptions) -> None:
    """A tensor given a type that needs an importance matrix must have an entry in it: llama.cpp's
    quantizer aborts the whole process otherwise (GGML_ASSERT in ggml_quantize_chunk)."""
    from .formats.imatrix import read_imatrix
    from .formats.quant_types import NEEDS_IMATRIX_TYPES

    assert options.imatrix is not None
    covered = set(read_imatrix(Path(options.imatrix)).entries)
    path = store.gguf_path(parent, "quantize")
    named = {"token_embd.weight": options.token_embedding_type, "output.weight": options.output_tensor_type}
    for t in read_gguf_header(path, label=str(parent.name)).tensors:
        wanted = named.get(t.name) or next((q for pattern, q in options.tensor_types if re.search(pattern, t.name)),
                                           None)
        if wanted is not None and wanted in NEEDS_IMATRIX_TYPES and t.name not in covered:
            raise InvalidParameterError(
                f"{t.name} is to be {wanted.name}, which needs an importance matrix, but the importance matrix has "
                f"no entry for it (llama-imatrix collects none for embeddings); give it another type",
                params="tensor_types",
            )


def _ternary_check(store: Store, parent: Manifest, qtype: QuantType, options: QuantizeOptions) -> list[str]:
    path = store.gguf_path(parent, "quantize")
    report = check_ternary(path, read_gguf_header(path, label=str(parent.name)))
    if report.ternary:
        return []
    loss = (
        f"{parent.name}'s weights are not ternary: a ternary code loses {100 * report.relative_error:.0f}% of "
        f"their signal (relative RMS error on {report.tensors_checked} sampled matrices), so expect "
        f"{qtype.name} output to be broken; it is meant for ternary-trained models (BitNet b1.58, TriLM)"
    )
    if not options.force:
        raise InvalidParameterError(f"{loss}. Set force to build it anyway", params="force")
    return [loss]


def _any_row_fits(store: Store, parent: Manifest, qtype: QuantType) -> bool:
    header = read_gguf_header(store.gguf_path(parent, "quantize"), label=str(parent.name))
    return any(len(t.shape) >= 2 and t.shape[0] % qtype.block_size == 0 for t in header.tensors)


def _mix_warning(manifest: Manifest, qtype: QuantType) -> str | None:
    wanted = qtype.main_type.name
    got = {s.ggml_type: s.n_params for s in manifest.info.type_mix}
    share = got.get(wanted, 0) / max(manifest.info.n_params, 1)
    if qtype.unquantized or share >= MATERIAL_SHARE:
        return None
    return (
        f"asked for {qtype.name} but only {100 * share:.0f}% of parameters are {wanted}: got "
        f"{manifest.info.type_mix_summary(4)} (llama.cpp falls back per tensor when rows are not "
        f"a multiple of {qtype.block_size})"
    )


def quantize(
    store: Store,
    parent_name: ModelName,
    types: Sequence[QuantType],
    options: QuantizeOptions,
    *,
    target: Callable[[QuantType], ModelName] | None = None,
    progress: Callable[[QuantType, int, int, str], None] | None = None,
) -> list[VariantResult]:
    """Produce a variant per type (skipping existing ones unless ``options.force``)."""
    parent = store.get(parent_name)
    plans = [(q, check_request(store, parent, q, options)) for q in types]  # refuse before doing anything
    results = []
    for qtype, warnings in plans:
        name = target(qtype) if target else parent_name.variant(qtype.name.lower())
        existing = store.find(name)
        same_imatrix = existing is not None and existing.source.get("imatrix") == imatrix_digest(options)
        if existing and existing.source.get("parent") == parent.digest and same_imatrix and not options.force:
            results.append(VariantResult(qtype, existing, built=False))
            continue
        manifest = _build(store, parent, qtype, options, name, progress)
        mix = _mix_warning(manifest, qtype)
        results.append(VariantResult(qtype, manifest, True, tuple(warnings + ([mix] if mix else []))))
    return results


def _build(
    store: Store,
    parent: Manifest,
    qtype: QuantType,
    options: QuantizeOptions,
    name: ModelName,
    progress: Callable[[QuantType, int, int, str], None] | None,
) -> Manifest:
    from .engines.llamacpp.engine import llama_cpp_version, quantize_file

    source = {
        "kind": "quantize",
        "parent": parent.digest,
        "parent_name": str(parent.name),
        "parent_type": parent.info.file_type or str(parent.info.main_type),
        "requested": qtype.name,
        "options": options.to_json(),
        "llama_cpp": llama_cpp_version(),
    }
    if options.imatrix is not None:
        source |= imatrix_source(options.imatrix)
    src = store.gguf_path(parent, "quantize")

    def produce(out: Path) -> None:
        report = (lambda done, total, tensor: progress(qtype, done, total, tensor)) if progress else None
        quantize_file(src, out, qtype, options, label=str(parent.name), progress=report)

    label = f"{parent.name} as {qtype.name}"
    return store.add_staged(store.stage(produce, label=label), name, label=label, source=source)


@lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    from .store.atomic import sha256_file

    return "sha256-" + sha256_file(Path(path))


def imatrix_digest(options: QuantizeOptions) -> str | None:
    """The imatrix file's digest, computed once however many types a command builds with it."""
    if options.imatrix is None:
        return None
    st = Path(options.imatrix).stat()
    return _file_digest(options.imatrix, st.st_size, st.st_mtime_ns)


def imatrix_source(path: str) -> dict[str, str]:
    """What lineage records of the importance matrix a variant was made with."""
    from .formats.imatrix import read_imatrix

    imatrix = read_imatrix(Path(path))
    return {"imatrix": imatrix_digest(QuantizeOptions(imatrix=path)) or "",
            "imatrix_text": ", ".join(imatrix.datasets)[:200],
            "imatrix_chunks": f"{imatrix.chunk_count}x{imatrix.chunk_size or '?'}"}


def quantize_to_file(
    store: Store, parent_name: ModelName, qtype: QuantType, options: QuantizeOptions, output: Path
) -> list[str]:
    """Write one variant to ``output`` outside the store (temp file beside it, then rename);
    an existing file is kept unless ``options.force``. Returns the warnings."""
    from .engines.llamacpp.engine import quantize_file
    from .store.atomic import TempFile

    parent = store.get(parent_name)
    warnings = check_request(store, parent, qtype, options)
    if output.is_dir():
        raise InvalidParameterError(
            f"output {output} is a directory; give a file path ending in .gguf", params="output"
        )
    if output.exists() and not options.force:
        raise InvalidParameterError(
            f"output {output} exists; choose another path or set force to replace it", params=("output", "force")
        )
    if not output.parent.is_dir():
        raise InvalidParameterError(f"output {output}: the folder {output.parent} does not exist", params="output")
    with TempFile(output.parent, f".{output.name}") as tmp:
        quantize_file(store.gguf_path(parent, "quantize"), tmp.path, qtype, options, label=str(parent.name))
        read_gguf_header(tmp.path, label=output.name)  # what llama.cpp wrote must pass our own check
        tmp.commit(output)
    return warnings
