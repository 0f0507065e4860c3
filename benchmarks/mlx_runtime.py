"""MLX beside llama.cpp and ONNX Runtime on SmolLM2: decode speed, evaluation fidelity, the table.

MLX's Linux build runs on the CPU (its wheel bundles the reference BLAS): exact but slow here,
so this measures on few chunks; on a Mac the same script measures the GPU build.

1. **Decode**: ``edgeslm bench``'s tg on MLX variants against mlx-lm's own generation loop
   (``native_decode``: ``mlx_lm.generate.generate_step``, greedy, after the same single token) on
   the same folder, each in a fresh process, interleaved (goal: >= 0.95x).
2. **Fidelity**: edgeslm's mean KLD of the MLX 4-bit and 8-bit variants against the F16 GGUF
   reference, against an independent computation (``independent_kld``: llama-cpp-python's
   ``Llama`` for the reference's logits, the model ``mlx_lm.load`` returns for the variant's,
   numpy in float64; the same chunks as llama-perplexity) (goal: within 1 %).
3. **Native llama.cpp**: the GGUF variants' pp512/tg128 by native ``llama-bench`` (built by
   ``shared/tools/build-native-llama.sh``) beside ``edgeslm bench``'s, alternating, so the table's
   llama.cpp rows stand beside llama.cpp's own figures from the same run.
4. **The table**: GGUF, ONNX and MLX variants evaluated against the F16 reference on the first
   chunks of WikiText-2: size, mean KLD, same top-1, PPL, pp/tg tok/s, peak RSS.

    .venv/bin/python benchmarks/mlx_runtime.py [--chunks 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.onnx_runtime import MODEL, WIKITEXT, native_section, table_section  # noqa: E402
from edgeslm.bench import BenchParams, run_worker  # noqa: E402
from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.convert.to_mlx import AUTO_DTYPE, MlxRecipe, convert_to_mlx  # noqa: E402
from edgeslm.convert.to_onnx import Precision, convert_to_onnx  # noqa: E402
from edgeslm.evaluate import EvalSettings, evaluate, load_text  # noqa: E402
from edgeslm.formats.quant_types import QuantizeOptions, parse_quant_types  # noqa: E402
from edgeslm.pull import pull  # noqa: E402
from edgeslm.quantize import quantize  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402

GGUF_TYPES = "F16,Q8_0,Q4_0"
ONNX_PRECISIONS = (Precision.INT8, Precision.INT4)
MLX_RECIPES = (MlxRecipe(dtype=AUTO_DTYPE, bits=8), MlxRecipe(dtype=AUTO_DTYPE, bits=4))
N_GEN = 64

NATIVE_DECODE = r"""
import json, sys, time
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
folder, n_gen, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, _ = load(folder)
def run(n):
    steps = generate_step(mx.array([first]), model, max_tokens=n + 1)  # greedy: mlx-lm's default sampler
    next(steps)  # the prompt's token and the first sample: not generation (as edgeslm bench)
    start = time.perf_counter()
    for _ in range(n):
        next(steps)
    return n / (time.perf_counter() - start)
run(16)  # warm-up, as llama-bench and edgeslm bench
print(json.dumps({"tg": run(n_gen)}))
"""

INDEPENDENT_KLD = r"""
import json, sys
import numpy as np
import mlx.core as mx
from mlx_lm import load
from llama_cpp import Llama
ref_path, folder, text_path, ctx, chunks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ref = Llama(ref_path, n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False)
tokens = ref.tokenize(open(text_path, "rb").read(), add_bos=True, special=False)  # bytes as they are (CRLF too)
with_bos = ref.tokenize(b"", add_bos=True, special=False)  # as edgeslm: BOS where the vocabulary adds one
model, _ = load(folder)
n_vocab = ref.n_vocab()
def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
klds = []
for i in range(chunks):
    chunk = tokens[i * ctx:(i + 1) * ctx]
    batch = (with_bos[:1] + chunk[1:]) if with_bos else chunk
    first = ctx // 2
    ref.reset()
    ref.eval(batch)
    p = np.array(ref.scores[:ctx])[first:-1]
    q = np.array(model(mx.array(batch)[None])[0].astype(mx.float32))[first:-1, :n_vocab]
    lp, lq = log_softmax(p), log_softmax(q)
    klds.append((np.exp(lp) * (lp - lq)).sum(-1))
print(json.dumps({"kld_mean": float(np.concatenate(klds).mean()), "positions": int(sum(len(k) for k in klds))}))
"""


def native_decode(folder: Path, first: int) -> float:
    argv = [sys.executable, "-c", NATIVE_DECODE, str(folder), str(N_GEN), str(first)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=3600).stdout
    return float(json.loads(out.strip().splitlines()[-1])["tg"])


def ours_decode(folder: Path) -> float:
    report = run_worker(str(folder), BenchParams(n_prompt=0, n_gen=N_GEN, repetitions=1), engine="mlx")
    return float(report["tests"][0]["samples_tps"][0])


def build(store: Store) -> list[str]:
    settings = resolve_settings(home=store.root.parent, offline=True)
    pull(store, MODEL, settings)
    names = [MODEL]
    kinds, options = parse_quant_types(GGUF_TYPES), QuantizeOptions(allow_requantize=True)
    names += [str(r.manifest.name) for r in quantize(store, parse_name(MODEL), kinds, options)]
    for precision in ONNX_PRECISIONS:
        names.append(str(convert_to_onnx(store, parse_name(MODEL), precision=precision).manifest.name))
    for recipe in MLX_RECIPES:
        start = time.perf_counter()
        convert_to_mlx(store, parse_name(MODEL), recipe)
        print(f"  built {MODEL}:{recipe.tag} in {time.perf_counter() - start:.1f} s", flush=True)
        names.append(f"{MODEL}:{recipe.tag}")
    return names


def decode_section(store: Store, rounds: int) -> None:
    print(f"\n## Decode tok/s (tg{N_GEN}): edgeslm bench vs mlx-lm's generate_step loop, interleaved, {rounds} rounds")
    print("  both start from token 0 (SmolLM2 adds no BOS), greedy, after a 16-token warm-up")
    for recipe in MLX_RECIPES:
        folder = store.model_path(store.get(parse_name(f"{MODEL}:{recipe.tag}")))
        ours, theirs = [], []
        for _ in range(rounds):
            theirs.append(native_decode(folder, 0))
            ours.append(ours_decode(folder))
        o, n = statistics.median(ours), statistics.median(theirs)
        print(f"  {recipe.tag:14} edgeslm {o:6.2f}   mlx-lm {n:6.2f}   ratio {o / n:.3f} (goal >= 0.95)   "
              f"rounds: ours {[round(x, 2) for x in ours]}, mlx-lm {[round(x, 2) for x in theirs]}")


def fidelity_section(store: Store, text_path: Path, chunks: int) -> None:
    print(f"\n## Evaluation fidelity: MLX vs F16 GGUF, {chunks} chunks x 512")
    ref = store.get(parse_name(f"{MODEL}:f16"))
    settings = EvalSettings(ctx=512, chunks=chunks, speed=False)
    for recipe in MLX_RECIPES:
        model = store.get(parse_name(f"{MODEL}:{recipe.tag}"))
        start = time.perf_counter()
        ours = evaluate(store, model.name, ref.name, load_text(text_path), settings, force=True)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        argv = [str(store.model_path(ref)), str(store.model_path(model)), str(text_path), "512", str(chunks)]
        out = subprocess.run([sys.executable, "-c", INDEPENDENT_KLD, *argv], check=True, capture_output=True,
                             text=True, timeout=3600)
        theirs = json.loads(out.stdout.strip().splitlines()[-1])
        theirs_s = time.perf_counter() - start
        assert ours.kld_mean is not None
        diff = (ours.kld_mean - theirs["kld_mean"]) / theirs["kld_mean"]
        print(f"  {recipe.tag:14} edgeslm mean KLD {ours.kld_mean:.6f} ({ours_s:.0f} s)   independent "
              f"{theirs['kld_mean']:.6f} over {theirs['positions']} positions ({theirs_s:.0f} s)   "
              f"relative difference {100 * diff:+.3f}% (goal within 1 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sections", default="decode,fidelity,native,table", help="which to run, comma-separated")
    args = parser.parse_args()
    text_path = WIKITEXT if WIKITEXT.is_file() else ROOT / "edgeslm" / "data" / "wikitext-2-sample.txt"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "models")
        print(f"# MLX beside llama.cpp and ONNX Runtime, {MODEL}; text {text_path.name}; MLX scales {AUTO_DTYPE}")
        names = build(store)
        wanted = set(args.sections.split(","))
        if "decode" in wanted:
            decode_section(store, args.rounds)
        if "fidelity" in wanted:
            fidelity_section(store, text_path, args.chunks)
        if "native" in wanted:
            native_section(store, names, args.rounds)
        if "table" in wanted:
            table_section(store, names, text_path, args.chunks, "GGUF, ONNX and MLX variants")


if __name__ == "__main__":
    main()
