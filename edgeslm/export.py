"""``edgeslm export NAME --format hf FOLDER``: a stored GGUF back to a Hugging Face folder.

Every tensor is dequantized to float32 (gguf-py's reference dequantizers) and renamed and
transformed back — Llama's Q/K rows un-permuted, Gemma's norms minus one — into
``model.safetensors``; ``config.json`` and ``generation_config.json`` come from the GGUF's
metadata, ``tokenizer.json`` and ``tokenizer_config.json`` from its vocabulary, merges, token
types, special tokens and chat template (byte-level BPE). The folder is written next to its
target and renamed into place (``staged_folder``), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import DEFAULT_CONTEXT
from .errors import InvalidModelFileError
from .store import Store, parse_name
from .store.atomic import staged_folder

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
HF_ARCH = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
           "qwen3": ("Qwen3ForCausalLM", "qwen3")}
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's pre-tokenizer names -> the tokenizer.json pre-tokenizer that splits text the same way
_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _GPT2,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _GPT2]},
    # Qwen2/2.5 (tokenizer.json of Qwen/Qwen2.5-*; llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2 splits alike)
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?"
                                               r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    ]},
}


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    architecture: str
    tensors: int


def export_hf(store: Store, name: str, target: Path) -> ExportResult:
    import gguf

    manifest = store.get(parse_name(name))
    reader = gguf.GGUFReader(store.gguf_path(manifest, "export"))
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"}
    meta = {k: _value(f) for k, f in reader.fields.items() if k not in big}
    arch = str(meta.get("general.architecture"))
    if arch not in HF_ARCH:
        raise InvalidModelFileError(
            f"{manifest.name} is a {arch} model; export to Hugging Face form supports {', '.join(HF_ARCH)}"
        )
    with staged_folder(target) as tmp:
        config = _config(meta, arch, reader)
        tensors = _tensors(reader, config)
        from .formats.safetensors import write_safetensors

        write_safetensors(tmp / "model.safetensors", tensors, {"format": "pt"})
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json",
                    {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config})
        _write_tokenizer(tmp, reader, meta)
    return ExportResult(target, config["architectures"][0], len(tensors))


def _value(field: Any) -> Any:
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError):
        return None


def _config(meta: dict[str, Any], arch: str, reader: Any) -> dict[str, Any]:
    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length") or get("rope.dimension_count") or n_embd // n_head)
    names = {t.name for t in reader.tensors}
    hf_arch, model_type = HF_ARCH[arch]
    vocab = meta.get(f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "architectures": [hf_arch], "model_type": model_type, "hidden_size": n_embd,
        "intermediate_size": int(get("feed_forward_length")), "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_head, "num_key_value_heads": int(get("attention.head_count_kv") or n_head),
        "head_dim": head_dim, "max_position_embeddings": int(get("context_length") or DEFAULT_CONTEXT),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon") or 1e-6),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(get("rope.freq_base") or 10000.0)},
        "rope_theta": float(get("rope.freq_base") or 10000.0), "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu", "torch_dtype": "float32",
        "attention_bias": "blk.0.attn_q.bias" in names,
    }
    for key, field in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if (value := meta.get(f"tokenizer.ggml.{field}")) is not None:
            config[key] = int(value)
    return config


def _tensors(reader: Any, config: dict[str, Any]) -> dict[str, F32]:
    import gguf

    permute = config["model_type"] == "llama"
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    out: dict[str, F32] = {}
    for t in reader.tensors:
        base, _, suffix = t.name.rpartition(".")
        if base.startswith("blk."):
            _, layer, kind = base.split(".", 2)
            if kind not in LAYER_NAMES:
                raise InvalidModelFileError(f"tensor {t.name} has no Hugging Face counterpart here")
            hf = f"model.layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"
        elif base in GLOBAL_NAMES:
            hf = f"{GLOBAL_NAMES[base]}.{suffix}"
        elif base == "rope_freqs":
            continue  # recomputed by transformers from rope_parameters
        else:
            raise InvalidModelFileError(f"tensor {t.name} has no Hugging Face counterpart here")
        data = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        data = data.reshape([int(d) for d in reversed(t.shape)])
        if permute and base.endswith(("attn_q", "attn_k")):
            data = _unpermute(data, n_head if base.endswith("attn_q") else n_kv)
        out[hf] = data
    return out


def _unpermute(w: F32, n_head: int) -> F32:
    """Inverse of convert.arch.to_rope_pairs: interleaved pairs back to [first halves; second halves]."""
    return np.ascontiguousarray(
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _write_tokenizer(folder: Path, reader: Any, meta: dict[str, Any]) -> None:
    model = meta.get("tokenizer.ggml.model")
    pre = str(meta.get("tokenizer.ggml.pre") or "gpt-2")
    if model != "gpt2" or pre not in PRE_TOKENIZERS:
        raise InvalidModelFileError(
            f"the tokenizer ({model}, pre-tokenizer {pre}) cannot be exported yet; byte-level BPE with "
            f"{', '.join(PRE_TOKENIZERS)} can"
        )
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8")
              for i in reader.fields["tokenizer.ggml.tokens"].data]
    types = [int(reader.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in reader.fields["tokenizer.ggml.token_type"].data]
    merges = [bytes(reader.fields["tokenizer.ggml.merges"].parts[i]).decode("utf-8")
              for i in reader.fields["tokenizer.ggml.merges"].data]
    flags = {"single_word": False, "lstrip": False, "rstrip": False}
    added = [{"id": i, "content": tok, **flags, "normalized": t != 3, "special": t == 3}
             for i, (tok, t) in enumerate(zip(tokens, types, strict=True)) if t in (3, 4)]
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre], "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]},
    }
    _write_json(folder / "tokenizer.json", spec)
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
                              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    for kind in ("bos", "eos", "unk", "pad"):
        key = {"unk": "unknown", "pad": "padding"}.get(kind, kind)
        if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None and int(i) < len(tokens):
            config[f"{kind}_token"] = tokens[int(i)]
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    _write_json(folder / "tokenizer_config.json", config)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
