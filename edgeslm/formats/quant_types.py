"""Every llama.cpp quantization type, as one table the CLI's choices and help are built from.

Names and file-type codes come from ``gguf.constants.LlamaFileType`` (llama.cpp's
``llama_ftype``); ``main_type`` is the ggml type most weights get (``default_type`` in
llama.cpp's ``llama_model_quantize_impl``); bits per weight follow from that type's block
size in ``GGML_QUANT_SIZES``. Mixed recipes (``_S``/``_M``/``_L``) give some tensors more bits,
so their files come out above the nominal figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import InvalidParameterError

T = GGMLQuantizationType

# ftype name -> the ggml type of most weights (llama-quant.cpp, `default_type`).
_MAIN_TYPE: dict[str, GGMLQuantizationType] = {
    "F32": T.F32, "F16": T.F16, "BF16": T.BF16,
    "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1, "Q8_0": T.Q8_0,
    "Q2_K": T.Q2_K, "Q2_K_S": T.Q2_K,
    "Q3_K_S": T.Q3_K, "Q3_K_M": T.Q3_K, "Q3_K_L": T.Q3_K,
    "Q4_K_S": T.Q4_K, "Q4_K_M": T.Q4_K, "Q5_K_S": T.Q5_K, "Q5_K_M": T.Q5_K, "Q6_K": T.Q6_K,
    "IQ1_S": T.IQ1_S, "IQ1_M": T.IQ1_M,
    "IQ2_XXS": T.IQ2_XXS, "IQ2_XS": T.IQ2_XS, "IQ2_S": T.IQ2_XS, "IQ2_M": T.IQ2_S,
    "IQ3_XXS": T.IQ3_XXS, "IQ3_XS": T.IQ3_S, "IQ3_S": T.IQ3_S, "IQ3_M": T.IQ3_S,
    "IQ4_NL": T.IQ4_NL, "IQ4_XS": T.IQ4_XS,
    "TQ1_0": T.TQ1_0, "TQ2_0": T.TQ2_0,
}

# llama-quantize refuses these without an importance matrix (tools/quantize/quantize.cpp).
# llama_model_quantize also refuses, per tensor, IQ2_S and IQ3_XXS tensors without one (so IQ2_M
# and IQ3_XXS fail on models whose rows take 256-blocks, and fall back on those whose rows don't).
_NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"})
# Tensor types llama.cpp quantizes only with the tensor's own importance entry (llama-quant.cpp's
# "Missing importance matrix for tensor ..."; ggml_quantize_chunk asserts for some of them).
NEEDS_IMATRIX_TYPES = frozenset({
    GGMLQuantizationType.IQ1_S, GGMLQuantizationType.IQ1_M, GGMLQuantizationType.IQ2_XXS,
    GGMLQuantizationType.IQ2_XS, GGMLQuantizationType.IQ2_S,
})
_TERNARY = frozenset({"TQ1_0", "TQ2_0"})
_UNQUANTIZED = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class QuantType:
    name: str  # as llama-quantize spells it: "Q4_K_M"
    ftype: LlamaFileType
    main_type: GGMLQuantizationType

    @property
    def bits_per_weight(self) -> float:
        block, size = GGML_QUANT_SIZES[self.main_type]
        return 8 * size / block

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.main_type][0]

    @property
    def needs_imatrix(self) -> bool:
        return self.name in _NEEDS_IMATRIX

    @property
    def ternary(self) -> bool:
        return self.name in _TERNARY

    @property
    def unquantized(self) -> bool:
        return self.name in _UNQUANTIZED

    def describe(self) -> str:
        notes = []
        if self.needs_imatrix:
            notes.append("needs calibration")
        if self.ternary:
            notes.append("ternary-trained models only")
        extra = f" ({', '.join(notes)})" if notes else ""
        return f"{self.name}: {self.bits_per_weight:.2f} bpw{extra}"


@dataclass(frozen=True)
class QuantizeOptions:
    """llama-quantize's options: requantizing, per-tensor types, the output and embedding types, an
    importance matrix file, threads."""

    allow_requantize: bool = False
    force: bool = False
    pure: bool = False
    leave_output_tensor: bool = False
    output_tensor_type: GGMLQuantizationType | None = None
    token_embedding_type: GGMLQuantizationType | None = None
    tensor_types: tuple[tuple[str, GGMLQuantizationType], ...] = ()  # (regex on tensor names, type)
    threads: int | None = None
    imatrix: str | None = None  # an importance matrix file (llama.cpp's GGUF imatrix), checked for the model

    def to_json(self) -> str:
        data = {
            "allow_requantize": self.allow_requantize, "pure": self.pure,
            "leave_output_tensor": self.leave_output_tensor,
            "output_tensor_type": self.output_tensor_type.name if self.output_tensor_type is not None else None,
            "token_embedding_type": self.token_embedding_type.name if self.token_embedding_type is not None else None,
            "tensor_types": [[p, t.name] for p, t in self.tensor_types],
        }
        if self.imatrix is not None:
            data["imatrix"] = True  # which one: the source's "imatrix" entry
        return json.dumps(data, sort_keys=True)


def _name(ftype: LlamaFileType) -> str:
    return "F32" if ftype.name == "ALL_F32" else ftype.name.removeprefix("MOSTLY_")


QUANT_TYPES: dict[str, QuantType] = {
    _name(f): QuantType(_name(f), f, _MAIN_TYPE[_name(f)]) for f in LlamaFileType if _name(f) in _MAIN_TYPE
}


def parse_quant_types(text: str) -> list[QuantType]:
    """'q8_0,Q4_K_M' -> [Q8_0, Q4_K_M]; unknown names are refused with the list of valid ones."""
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUANT_TYPES]
    if unknown or not names:
        raise InvalidParameterError(
            f"unknown quantization type {', '.join(unknown) or repr(text)}; valid: {', '.join(QUANT_TYPES)}"
        )
    return [QUANT_TYPES[n] for n in dict.fromkeys(names)]


def parse_ggml_type(text: str) -> GGMLQuantizationType:
    """A single tensor type for overrides: 'q8_0', 'F16'."""
    try:
        ggml_type = GGMLQuantizationType[text.strip().upper()]
    except KeyError:
        valid = ", ".join(t.name for t in GGMLQuantizationType if t in GGML_QUANT_SIZES)
        raise InvalidParameterError(f"unknown tensor type {text!r}; valid: {valid}") from None
    return ggml_type
