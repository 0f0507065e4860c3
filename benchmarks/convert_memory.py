"""Peak memory of ``edgeslm convert`` against the checkpoint's size: it should stay near one tensor.

Writes a synthetic Llama checkpoint (random BF16 weights, sharded, ~0.85B parameters by default)
and a small tokenizer into a temp folder, converts it to F16 in a fresh process and prints that
process's peak RSS beside the checkpoint size and the largest tensor.

    .venv/bin/python benchmarks/convert_memory.py [--hidden 2048 --layers 16 --ff 5632 --vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hfbuild import write_tokenizer  # noqa: E402


def write_shard(path: Path, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> None:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            n = int(np.prod(shape))
            for start in range(0, n, 1 << 24):  # 16M values at a time
                part = (rng.standard_normal(min(1 << 24, n - start), dtype=np.float32) * 0.02).view(np.uint32)
                fp.write((part >> 16).astype("<u2").tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--ff", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    a = p.parse_args()
    heads, kv = a.hidden // 64, a.hidden // 256
    with tempfile.TemporaryDirectory(prefix="convert-mem-") as tmp:
        folder = Path(tmp) / "ckpt"
        write_tokenizer(folder)
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
                  "intermediate_size": a.ff, "num_hidden_layers": a.layers, "num_attention_heads": heads,
                  "num_key_value_heads": kv, "vocab_size": a.vocab, "max_position_embeddings": 4096,
                  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}
        (folder / "config.json").write_text(json.dumps(config))
        rng = np.random.default_rng(0)
        weight_map: dict[str, str] = {}
        shards = [{"model.embed_tokens.weight": (a.vocab, a.hidden), "model.norm.weight": (a.hidden,),
                   "lm_head.weight": (a.vocab, a.hidden)}]
        for i in range(a.layers):
            pre = f"model.layers.{i}."
            h, k = a.hidden, kv * 64
            shapes = {"input_layernorm": (h,), "post_attention_layernorm": (h,), "self_attn.q_proj": (h, h),
                      "self_attn.k_proj": (k, h), "self_attn.v_proj": (k, h), "self_attn.o_proj": (h, h),
                      "mlp.gate_proj": (a.ff, h), "mlp.up_proj": (a.ff, h), "mlp.down_proj": (h, a.ff)}
            shards.append({f"{pre}{n}.weight": s for n, s in shapes.items()})
        for k, shapes in enumerate(shards):
            name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_shard(folder / name, shapes, rng)
            weight_map |= dict.fromkeys(shapes, name)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        largest = max(int(np.prod(s)) for sh in shards for s in sh.values())
        params = sum(int(np.prod(s)) for sh in shards for s in sh.values())
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "edgeslm", "--home", str(Path(tmp) / "home"), "convert", str(folder),
               "--outtype", "f16", "--name", "big"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(proc.stderr.read().decode() if proc.stderr else "convert failed")
        seconds = time.perf_counter() - start
        print(f"checkpoint: {params / 1e9:.2f}B parameters, {size / 2**30:.2f} GiB BF16 in {len(shards)} shards; "
              f"largest tensor {largest * 4 / 2**20:.0f} MiB as float32")
        print(f"convert to F16: {seconds:.1f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB "
              f"({usage.ru_maxrss * 1024 / size:.2f}x the checkpoint)")


if __name__ == "__main__":
    main()
