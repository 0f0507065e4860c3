"""``edgeslm convert``: a Hugging Face checkpoint (a local folder) into the store as GGUF.

The folder is read defensively (``hf``, ``safetensors``), its architecture looked up (``arch``),
its shapes checked against its config, its tokenizer converted (``vocab``), then every tensor
is read, transformed, encoded to the output type and written one at a time into the store's
temp file, which the store hashes, validates and publishes with the checkpoint's lineage.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

from ..config import Settings
from ..errors import InputFileError, InvalidModelFileError, InvalidParameterError
from ..sources.hub import download_checkpoint, parse_hub_ref
from ..store import ModelName, Store, parse_name
from ..store.atomic import sha256_file
from ..store.records import Manifest
from . import bert
from .arch import Arch, Transform, add_metadata, arch_of, extra_tensors, tensors
from .hf import Checkpoint, open_checkpoint
from .hparams import Hparams, hparams
from .vocab import add_vocab

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
_PHI3 = re.compile(r"(?i)(phi)-?(3)")
OUTTYPES: dict[str, Q | None] = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "auto": None}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
CHECKPOINT_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "F64": Q.F32}
KEPT_F32 = {gguf.TENSOR_NAMES[t] + ".weight" for t in (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)}


@dataclass(frozen=True)
class ConvertResult:
    manifest: Manifest
    architecture: str
    outtype: str
    pre_tokenizer: str


@dataclass(frozen=True)
class _Planned:
    name: str  # in the GGUF
    source: str | None  # in the checkpoint (None: computed)
    transform: Transform | None
    qtype: Q
    shape: tuple[int, ...]
    data: npt.NDArray[np.float32] | None = None


def parse_outtype(text: str) -> str:
    t = text.strip().lower()
    if t not in OUTTYPES:
        raise InvalidParameterError(f"outtype {text!r} is unknown; valid: {', '.join(OUTTYPES)}", params="outtype")
    return t


def convert_source(
    store: Store, source: str, settings: Settings, *, outtype: str = "auto", name: str | None = None
) -> ConvertResult:
    """Convert a local folder, or a hub checkpoint ``hf.co/ORG/REPO`` (fetched first)."""
    outtype = parse_outtype(outtype)
    folder = Path(source).expanduser()
    if folder.is_dir():
        return convert(store, folder, outtype=outtype, name=name)
    ref = parse_hub_ref(source)
    if ref is None:
        raise InputFileError(f"{source} is neither a folder nor a hub reference (hf.co/ORG/REPO)")
    local, revision = download_checkpoint(ref, settings, store.root / "downloads")
    lineage = {"repo": ref.repo_id, "revision": revision, "endpoint": settings.hf_endpoint}
    return convert(store, local, outtype=outtype, name=name or ref.repo_id.split("/")[-1].lower(), lineage=lineage)


def convert(
    store: Store, folder: Path, *, outtype: str = "auto", name: str | None = None, lineage: dict[str, str] | None = None
) -> ConvertResult:
    """Convert the checkpoint in ``folder`` and store it as ``name`` (default: the folder's name)."""
    outtype = parse_outtype(outtype)
    ckpt = open_checkpoint(folder)
    arch = arch_of(ckpt)
    hp = hparams(ckpt)
    check_shapes(ckpt, hp, arch)
    target = parse_name(name or folder.resolve().name.lower())
    qtype = OUTTYPES[outtype] or CHECKPOINT_TYPES.get(ckpt.dominant_dtype(), Q.F16)
    source = {"kind": "convert", "folder": str(folder.resolve()), "architecture": ckpt.architecture,
              "outtype": qtype.name, **_lineage(ckpt), **(lineage or {})}
    pre: list[str] = []

    def produce(path: Path) -> None:
        pre.append(write_gguf(ckpt, arch, hp, qtype, path, target))

    label = f"{folder.name} ({ckpt.architecture})"
    manifest = store.add_staged(store.stage(produce, label=label), target, label=label, source=source)
    return ConvertResult(manifest, ckpt.architecture, qtype.name, pre[0])


def _lineage(ckpt: Checkpoint) -> dict[str, str]:
    """Digests of the files the model came from (sha256 of config.json and each weight file)."""
    files = sorted({f.path for f in ckpt.shards.values()} | {ckpt.folder / "config.json"})
    out = {f"sha256:{p.name}": sha256_file(p) for p in files}
    revision = (ckpt.config.get("_commit_hash") or "").strip()
    return {**out, **({"revision": revision} if revision else {})}


def check_shapes(ckpt: Checkpoint, hp: Hparams, arch: Arch) -> None:
    """The tensors the config determines must have the shapes it implies."""
    expected, required = bert.shapes(hp) if arch.encoder else _decoder_shapes(hp)
    for tensor, shape in expected.items():
        if tensor in ckpt.shards and ckpt.entry(tensor).shape != shape:
            raise InvalidModelFileError(
                f"tensor {tensor} has shape {list(ckpt.entry(tensor).shape)} but config.json implies {list(shape)}"
            )
    missing = [t for t in required if t not in ckpt.shards]
    if missing:
        raise InvalidModelFileError(f"tensor {missing[0]} is missing: the weights do not match config.json")


def _decoder_shapes(hp: Hparams) -> tuple[dict[str, tuple[int, ...]], tuple[str, ...]]:
    expected = {
        "model.embed_tokens.weight": (hp.n_vocab, hp.n_embd),
        "lm_head.weight": (hp.n_vocab, hp.n_embd),
        "model.norm.weight": (hp.n_embd,),
    }
    for i in range(hp.n_layer):
        p = f"model.layers.{i}."
        expected |= {
            p + "self_attn.q_proj.weight": (hp.n_head * hp.head_dim, hp.n_embd),
            p + "self_attn.k_proj.weight": (hp.n_head_kv * hp.head_dim, hp.n_embd),
            p + "self_attn.v_proj.weight": (hp.n_head_kv * hp.head_dim, hp.n_embd),
            p + "self_attn.o_proj.weight": (hp.n_embd, hp.n_head * hp.head_dim),
            p + "mlp.gate_proj.weight": (hp.n_ff, hp.n_embd),
            p + "mlp.up_proj.weight": (hp.n_ff, hp.n_embd),
            p + "mlp.down_proj.weight": (hp.n_embd, hp.n_ff),
            p + "self_attn.qkv_proj.weight": ((hp.n_head + 2 * hp.n_head_kv) * hp.head_dim, hp.n_embd),  # Phi-3
            p + "mlp.gate_up_proj.weight": (2 * hp.n_ff, hp.n_embd),
        }
    return expected, ("model.embed_tokens.weight", f"model.layers.{hp.n_layer - 1}.self_attn.o_proj.weight")


def _qtype_for(plan_qtype: Q, name: str, shape: tuple[int, ...]) -> Q:
    if len(shape) < 2 or name in KEPT_F32:
        return Q.F32  # norms, biases and position tables stay F32, as llama.cpp's converter keeps them
    if plan_qtype == Q.Q8_0 and shape[-1] % 32:
        return Q.F16  # rows Q8_0 cannot block
    return plan_qtype


def _encode(data: npt.NDArray[np.float32], qtype: Q) -> npt.NDArray[np.generic]:
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _shape(ckpt: Checkpoint, src: str, mapped: str, n_vocab: int) -> tuple[int, ...]:
    shape = ckpt.entry(src).shape
    if mapped in ("token_embd.weight", "output.weight"):
        return (min(shape[0], n_vocab), *shape[1:])
    return shape


def _general_name(name: str, ckpt: Checkpoint) -> str:
    """llama.cpp gives special tokens of a model whose general.name contains "phi3" or "phi-3" the
    Phi-3 treatment and then needs </s>, <unk>, <s> and <|endoftext|> in its vocabulary; a model
    named so without them (a Phi-4-style tokenizer) would not load, so its name is written "phi 3"."""
    if not _PHI3.search(name):
        return name
    vocab = json.loads(ckpt.tokenizer_json.read_text(encoding="utf-8")) if ckpt.tokenizer_json else {}
    have = set((vocab.get("model") or {}).get("vocab") or {})
    have |= {t.get("content") for t in vocab.get("added_tokens", [])}
    if {"</s>", "<unk>", "<s>", "<|endoftext|>"} <= have:
        return name
    return _PHI3.sub(r"\1 \2", name)


def write_gguf(ckpt: Checkpoint, arch: Arch, hp: Hparams, qtype: Q, path: Path, name: ModelName) -> str:
    """Write the GGUF at ``path``, one tensor in memory at a time; return the pre-tokenizer name."""
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch.gguf])
    try:
        w.add_file_type(FILE_TYPES[qtype])
        add_metadata(w, arch, hp, ckpt)
        pre, n_vocab = (bert.add_vocab(w, ckpt, hp.n_vocab) if arch.encoder else
                        add_vocab(w, ckpt, hp.n_vocab, truncate=arch.truncate_vocab, space_prefix=arch.space_prefix))
        w.add_name(_general_name(name.model, ckpt))
        plan = [_Planned(g, src, fn, _qtype_for(qtype, g, _shape(ckpt, src, g, n_vocab)), _shape(ckpt, src, g, n_vocab))
                for g, src, fn in tensors(ckpt, arch, hp, n_vocab)]
        plan += [_Planned(g, None, None, Q.F32, data.shape, data) for g, data in extra_tensors(arch, hp)]
        for p in plan:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(p.shape, p.qtype)
            w.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=p.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for p in plan:
            data = ckpt.load(p.source) if p.source is not None else p.data
            assert data is not None
            if p.transform is not None:
                data = p.transform(data)
            w.write_tensor_data(_encode(data, p.qtype).view(np.uint8))
            log.debug("wrote %s (%s)", p.name, p.qtype.name)
    finally:
        w.close()
    return pre
