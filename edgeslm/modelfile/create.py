"""``edgeslm create NAME -f Modelfile`` (and ``/api/create``): a model built on a base, with its
adapters, system prompt, parameters, example messages, template and licence.

Everything cheap is checked first (parameters, messages, template); then the base is found
(a stored model, a .gguf file, or a Hugging Face folder, converted), each adapter converted or
copied into a staged blob and checked against the base, and only then is the model published:
its new blobs and its manifest together, so a failure at any step stores nothing new (a
``FROM`` folder converted and a base quantized with ``--quantize`` wait under interim names,
removed at the end, success or not).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..adapters.gguf_lora import check_against, read_lora
from ..adapters.peft import is_peft_folder, peft_to_gguf
from ..config import Settings
from ..errors import EdgeslmError, InputFileError, InvalidNameError, ModelfileError, ModelNotFoundError
from ..formats.gguf_header import GGUFHeader, read_gguf_header
from ..formats.model_info import model_info
from ..store import ModelName, Store, parse_name
from ..store.layers import AdapterRef
from ..store.records import Manifest, Staged, now_iso
from .params import check
from .parser import ROLES, Instruction, Modelfile
from .template import compile_template

log = logging.getLogger(__name__)
Report = Callable[[str], None]
Quantizer = Callable[[Store, str, str, str], Any]  # (store, source, target, llama.cpp type)


@dataclass(frozen=True)
class CreateSpec:
    """What a Modelfile (or a create request) asks for, with where each part was written."""

    source: str  # FROM
    adapters: tuple[str, ...] = ()
    system: str | None = None
    template: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[Mapping[str, str], ...] = ()
    license: tuple[str, ...] = ()
    where: str = "Modelfile"
    lines: Mapping[str, int] = field(default_factory=dict)  # "from", "adapter.0", "template" -> line
    base_dir: Path | None = None  # relative paths resolve here; None: no paths (a request over HTTP)
    files: Mapping[str, Path] = field(default_factory=dict)  # names a request's FROM/ADAPTER may use (blobs)

    def at(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.where} (line {line})" if line else f"{self.where}: {key.split('.')[0]}"


def spec_from_modelfile(mf: Modelfile, base_dir: Path | None, where: str = "Modelfile") -> CreateSpec:
    from .params import from_commands

    lines: dict[str, int] = {}
    source = mf.last(Instruction.FROM)
    assert source is not None  # the parser refuses a Modelfile without FROM
    lines["from"] = source.line
    for other in (Instruction.SYSTEM, Instruction.TEMPLATE):
        found = mf.last(other)
        if found:
            lines[other.value] = found.line
    adapters = mf.all(Instruction.ADAPTER)
    messages = mf.all(Instruction.MESSAGE)
    lines |= {f"adapter.{i}": c.line for i, c in enumerate(adapters)}
    lines |= {f"message.{i}": c.line for i, c in enumerate(messages)}
    for refused in (Instruction.DRAFT, Instruction.RENDERER, Instruction.PARSER):
        if found := mf.last(refused):
            raise ModelfileError(f"{where} (line {found.line}): {refused.name} is Ollama's and not supported by "
                                 "edgeslm; remove the line (drafts: 'edgeslm serve --draft MODEL=KIND')")
    system, template = mf.last(Instruction.SYSTEM), mf.last(Instruction.TEMPLATE)
    return CreateSpec(
        source=source.value, adapters=tuple(c.value for c in adapters), system=system.value if system else None,
        template=template.value if template else None,
        parameters=from_commands(mf.all(Instruction.PARAMETER), where),
        messages=tuple({"role": c.key, "content": c.value} for c in messages),
        license=tuple(c.value for c in mf.all(Instruction.LICENSE)), where=where, lines=lines, base_dir=base_dir,
    )


def create_model(store: Store, name: ModelName, spec: CreateSpec, settings: Settings, *, quantize: str | None = None,
                 report: Report = log.info, quantizer: Quantizer | None = None) -> Manifest:
    """Build ``name`` from ``spec`` and publish it; the store is unchanged if anything fails.
    ``quantize``: a llama.cpp type the base is quantized to first, by ``quantizer`` (source,
    target, type; default: in this process; the server passes one that runs a child)."""
    defaults = checked_defaults(spec)
    staged: list[Staged] = []
    interim: list[ModelName] = []  # models a step stored (a converted folder, a quantized base) until the end
    try:
        base, header = _base(store, name, spec, settings, staged, report, interim)
        if quantize:
            interim.append(_interim_name())
            base, header = _quantized(store, base, interim[-1], quantize, quantizer or _quantize_here, report)
        has_template = header is None or "tokenizer.chat_template" in header.metadata or spec.template
        if spec.messages and not (has_template or base.defaults.get("template")):
            raise ModelfileError(f"{spec.at('message.0')}: MESSAGE needs a chat template and {spec.source} has "
                                 "none; add a TEMPLATE")
        if spec.adapters and header is None:
            raise ModelfileError(f"{spec.at('adapter.0')}: adapters apply to GGUF models (llama.cpp); "
                                 f"{spec.source} is {base.format.value}")
        assert header is not None or not spec.adapters
        refs = tuple(_adapter(store, spec, i, base, header, staged, report)  # type: ignore[arg-type]
                     for i in range(len(spec.adapters)))
        merged = _merge(base.defaults, defaults)
        stored_base = base.name not in interim and store.find(base.name) is not None
        source = {**base.source, "base_name": str(base.name)} if stored_base else dict(base.source)
        manifest = replace(base, name=name, created=now_iso(), defaults=merged, adapters=base.adapters + refs,
                           source=source)
        report("writing manifest")
        store.commit([manifest], staged)
        log.info("stored %s (%d adapter(s))", manifest.name, len(manifest.adapters))
        return manifest
    finally:
        for item in staged:
            item.discard()
        made = [n for n in interim if store.find(n) is not None]
        if made:  # their blobs stay if the new model names them, and go if not
            store.execute_remove(store.plan_remove(made))


def checked_defaults(spec: CreateSpec) -> dict[str, Any]:
    """The spec's system prompt, parameters, messages, template and licence, checked."""
    out: dict[str, Any] = {}
    if spec.system is not None:
        out["system"] = spec.system
    if spec.parameters:
        out["parameters"] = check(spec.parameters)
    for i, m in enumerate(spec.messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ModelfileError(f"{spec.at(f'message.{i}')}: a message needs a role ({', '.join(ROLES)}) and text")
    if spec.messages:
        out["messages"] = [{"role": m["role"], "content": m["content"]} for m in spec.messages]
    if spec.template is not None:
        out["template"] = compile_template(spec.template, spec.at("template"))
        out["template_source"] = spec.template
    if spec.license:
        out["license"] = list(spec.license)
    return out


def _merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's inheritance: a new system, template or message list replaces the base's;
    parameters merge (the new win); licences add up."""
    merged = {**old, **new}
    if "parameters" in old and "parameters" in new:
        merged["parameters"] = {**old["parameters"], **new["parameters"]}
    if "license" in old and "license" in new:
        merged["license"] = [*old["license"], *new["license"]]
    return merged


def _path(spec: CreateSpec, value: str) -> Path | None:
    """The file or folder ``value`` names, if it names one that exists (paths resolve next to the
    Modelfile; over HTTP there are no paths)."""
    if value in spec.files:
        return spec.files[value]
    if spec.base_dir is None:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else spec.base_dir / path
    return path if path.exists() else None


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".gguf", "/")) or "\\" in value


def _base(store: Store, name: ModelName, spec: CreateSpec, settings: Settings, staged: list[Staged],
          report: Report, interim: list[ModelName]) -> tuple[Manifest, GGUFHeader | None]:
    where = spec.at("from")
    path = _path(spec, spec.source)
    if path is not None and path.is_file():
        report(f"copying {path.name}")
        header = read_gguf_header(path)  # refuse a hostile file before copying a byte of it
        item = store.stage(lambda dst: _copy(path, dst), label=path.name)
        staged.append(item)
        info = model_info(read_gguf_header(item.tmp.path, label=path.name))
        if info.architecture == "unknown" or not info.n_tensors:
            raise ModelfileError(f"{where}: {path.name} is a GGUF file but not a model")
        source = {"kind": "file", "path": str(path.absolute())}
        return Manifest(_interim_name(), item.digest, item.size, now_iso(), info, source), header  # named at the end
    if path is not None and path.is_dir():
        interim.append(_interim_name())
        return _from_folder(store, interim[-1], path, settings, report)
    if spec.base_dir is not None and _looks_like_path(spec.source):
        raise InputFileError(f"{where}: {spec.source} does not exist (paths are read next to the Modelfile)")
    try:
        wanted = parse_name(spec.source)
    except InvalidNameError as exc:
        raise ModelfileError(f"{where}: FROM {spec.source[:80]!r} names no model ({exc})") from None
    from ..pull import pull_missing

    stored = pull_missing(store, str(wanted), settings)
    if stored is None:
        raise ModelNotFoundError(f"{where}: model {wanted} is not in the store; see 'edgeslm list'")
    return stored, _header(store, stored)


def _interim_name() -> ModelName:
    """Where a step's model waits (a converted folder, a quantized base) until the create ends."""
    return parse_name(f"edgeslm-create-{secrets.token_hex(6)}")


def _header(store: Store, base: Manifest) -> GGUFHeader | None:
    """The base's GGUF header (None for a folder model: ONNX, MLX)."""
    if base.layers:
        return None
    return read_gguf_header(store.blob_path(base.digest), label=str(base.name))


def _from_folder(store: Store, name: ModelName, folder: Path, settings: Settings,
                 report: Report) -> tuple[Manifest, GGUFHeader | None]:
    config: Any = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8")[: 1 << 20])
        except (UnicodeDecodeError, json.JSONDecodeError):
            config = {}
    if (folder / "genai_config.json").is_file() or (isinstance(config, dict) and "quantization" in config):
        from ..importing import import_model

        report(f"importing {folder.name}")
        base = import_model(store, folder, name)
    else:
        from ..convert import convert

        report(f"converting {folder.name} to GGUF")
        base = convert(store, folder, name=str(name)).manifest
    return base, _header(store, base)


def _quantize_here(store: Store, source: str, target: str, qtype: str) -> None:
    from ..formats.quant_types import QuantizeOptions, parse_quant_types
    from ..quantize import quantize

    kinds = parse_quant_types(qtype)[:1]
    quantize(store, parse_name(source), kinds, QuantizeOptions(allow_requantize=True, force=True),
             target=lambda _: parse_name(target))


def _quantized(store: Store, base: Manifest, name: ModelName, qtype: str, quantizer: Quantizer,
               report: Report) -> tuple[Manifest, GGUFHeader | None]:
    if store.find(base.name) is None:  # a staged .gguf: not stored yet
        raise ModelfileError(
            "create --quantize works FROM a stored model; store the file or folder first "
            "('edgeslm import FILE', 'edgeslm convert FOLDER') and create from its name"
        )
    report(f"quantizing {base.info.file_type or 'the'} model to {qtype.upper()}")
    quantizer(store, str(base.name), str(name), qtype)
    quantized = store.get(name)
    return replace(quantized, defaults=base.defaults, adapters=base.adapters), _header(store, quantized)


def _adapter(store: Store, spec: CreateSpec, i: int, base: Manifest, header: GGUFHeader,
             staged: list[Staged], report: Report) -> AdapterRef:
    where, value = spec.at(f"adapter.{i}"), spec.adapters[i]
    base_label = str(spec.source)
    path = _path(spec, value)
    shown = value if value in spec.files else path.name if path is not None else value  # a request's own file name
    try:
        if path is not None:
            if path.is_dir() and not is_peft_folder(path):
                raise InputFileError(f"{path} is a folder without adapter_config.json: not a PEFT adapter")
            if path.is_dir():
                report(f"converting the PEFT adapter {shown} to a GGUF LoRA")
                item = store.stage(lambda dst: _peft(path, header, dst, base_label), label=shown)
            else:
                report(f"copying the adapter {shown}")
                check_against(read_lora(path), header, shown, base_label)
                item = store.stage(lambda dst: _copy(path, dst), label=shown)
            staged.append(item)
            check_against(read_lora(item.tmp.path, shown), header, shown, base_label)
            return AdapterRef(item.digest, item.size, 1.0, base.digest, shown)
        if spec.base_dir is not None and _looks_like_path(value):
            raise InputFileError(f"{value} does not exist (paths are read next to the Modelfile)")
        return _stored_adapter(store, value, base, header, base_label)
    except EdgeslmError as exc:
        if str(exc).startswith(spec.where):
            raise
        raise type(exc)(f"{where}: {exc}") from None


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def _peft(folder: Path, header: GGUFHeader, out: Path, base_label: str) -> None:
    peft_to_gguf(folder, header, out, base_label=base_label)


def _stored_adapter(store: Store, value: str, base: Manifest, header: GGUFHeader, base_label: str) -> AdapterRef:
    """The adapter of a stored model (``edgeslm finetune`` stores one as a model of its own)."""
    try:
        holder = store.find(parse_name(value))
    except InvalidNameError:
        holder = None
    if holder is None or not holder.adapters:
        raise ModelNotFoundError(f"ADAPTER {value[:80]} is neither a file, a PEFT folder nor a stored model with an "
                                 "adapter ('edgeslm list' shows them)")
    if len(holder.adapters) != 1:
        raise ModelfileError(f"{holder.name} carries {len(holder.adapters)} adapters; name one model per ADAPTER")
    ref = holder.adapters[-1]
    if ref.base and not same_family(store, ref.base, base.digest):
        raise ModelfileError(f"the adapter of {holder.name} was made for {_describe(store, ref.base)}, and "
                             f"{base_label} does not descend from it: use it with that base")
    check_against(read_lora(store.blob_path(ref.digest), str(holder.name)), header, str(holder.name), base_label)
    return ref


def lineage(store: Store, digest: str) -> list[str]:
    """``digest`` and the digests it was made from (quantize, convert), nearest first."""
    by_digest = {m.digest: m for m in store.manifests()}
    chain = [digest]
    while (m := by_digest.get(chain[-1])) is not None and m.source.get("parent") and len(chain) < 32:
        parent = m.source["parent"]
        if parent in chain:
            break
        chain.append(parent)
    return chain


def same_family(store: Store, a: str, b: str) -> bool:
    """Two models with a common root: an adapter made for one fits the others (its quantized variants)."""
    return lineage(store, a)[-1] == lineage(store, b)[-1]


def _describe(store: Store, digest: str) -> str:
    names = [str(m.name) for m in store.manifests() if m.digest == digest]
    return f"{names[0]} ({digest[:19]})" if names else digest[:19]


