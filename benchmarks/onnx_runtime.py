"""ONNX Runtime beside llama.cpp on SmolLM2: decode speed, evaluation fidelity, the table.

1. **Decode**: ``edgeslm bench``'s tg128 on ONNX variants against onnxruntime-genai's own
   generation loop (``native_decode``, a plain script: its Generator, greedy, 128 tokens after
   BOS) on the same folder, each in a fresh process, interleaved (goal: >= 0.95x).
2. **Fidelity**: edgeslm's mean KLD of the ONNX int4 variant against the F16 GGUF reference,
   against an independent computation (``independent_kld``: llama-cpp-python's high-level
   ``Llama`` for the reference's logits, onnxruntime-genai's ``logits`` output for the
   variant's, numpy in float64; the same chunks as llama-perplexity) (goal: within 1 %).
3. **Native llama.cpp**: the GGUF variants' pp512/tg128 by native ``llama-bench``
   (built by ``shared/tools/build-native-llama.sh``) beside ``edgeslm bench``'s, alternating.
4. **The table**: every variant of both runtimes, evaluated against the F16 reference on the
   first chunks of WikiText-2: size, mean KLD, same top-1, PPL, pp/tg tok/s, peak RSS.

    .venv/bin/python benchmarks/onnx_runtime.py [--chunks 8] [--rounds 3]
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

from benchmarks.edgeslm_cli import native_bin  # noqa: E402
from edgeslm.bench import BenchParams, run_worker  # noqa: E402
from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.convert.to_onnx import Method, Precision, convert_to_onnx, default_tag  # noqa: E402
from edgeslm.engines.base import physical_cores  # noqa: E402
from edgeslm.evaluate import EvalSettings, evaluate, load_text  # noqa: E402
from edgeslm.evaluate.report import markdown_table  # noqa: E402
from edgeslm.formats.quant_types import QuantizeOptions, parse_quant_types  # noqa: E402
from edgeslm.pull import pull  # noqa: E402
from edgeslm.quantize import quantize  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402

MODEL = "smollm2-135m-instruct"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
GGUF_TYPES = "F16,Q8_0,Q5_1,Q4_K_M,Q4_0"
ONNX_VARIANTS = (
    (Precision.FP32, Method.BUILDER), (Precision.INT8, Method.BUILDER), (Precision.INT4, Method.BUILDER),
    (Precision.INT8, Method.DYNAMIC), (Precision.INT8, Method.STATIC),
)
N_GEN = 128

NATIVE_DECODE = r"""
import json, sys, time
import onnxruntime_genai as og
folder, n_gen, bos, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = og.Config(folder)
if threads:  # the session options edgeslm sets; 0: the folder's own (onnxruntime's defaults)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
model = og.Model(config)
def run(n):
    p = og.GeneratorParams(model)
    p.set_search_options(max_length=n + 8, do_sample=False)
    g = og.Generator(model, p)
    g.append_tokens([bos])
    g.generate_next_token()  # the prompt's token: not generation (as edgeslm bench)
    start = time.perf_counter()
    for _ in range(n):
        g.generate_next_token()
    return n / (time.perf_counter() - start)
run(16)  # warm-up, as llama-bench and edgeslm bench
print(json.dumps({"tg": run(n_gen)}))
"""

INDEPENDENT_KLD = r"""
import json, sys
import numpy as np
import onnxruntime_genai as og
from llama_cpp import Llama
ref_path, folder, text_path, ctx, chunks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ref = Llama(ref_path, n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False)
tokens = ref.tokenize(open(text_path, "rb").read(), add_bos=True, special=False)  # bytes as they are (CRLF too)
with_bos = ref.tokenize(b"", add_bos=True, special=False)  # as edgeslm: BOS where the vocabulary adds one
model = og.Model(folder)
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
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ctx + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(batch, dtype=np.int32))
    q = np.asarray(gen.get_output("logits"), dtype=np.float32).reshape(ctx, -1)[first:-1]
    lp, lq = log_softmax(p), log_softmax(q)
    klds.append((np.exp(lp) * (lp - lq)).sum(-1))
print(json.dumps({"kld_mean": float(np.concatenate(klds).mean()), "positions": int(sum(len(k) for k in klds))}))
"""


def native_decode(folder: Path, bos: int, threads: int) -> float:
    argv = [sys.executable, "-c", NATIVE_DECODE, str(folder), str(N_GEN), str(bos), str(threads)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=3600).stdout
    return float(json.loads(out.strip().splitlines()[-1])["tg"])


def ours_decode(folder: Path) -> float:
    report = run_worker(str(folder), BenchParams(n_prompt=0, n_gen=N_GEN, repetitions=1), engine="onnxruntime")
    return float(report["tests"][0]["samples_tps"][0])


def build(store: Store) -> list[str]:
    settings = resolve_settings(home=store.root.parent, offline=True)
    pull(store, MODEL, settings)
    names = [MODEL]
    kinds, options = parse_quant_types(GGUF_TYPES), QuantizeOptions(allow_requantize=True)
    names += [str(r.manifest.name) for r in quantize(store, parse_name(MODEL), kinds, options)]
    for precision, method in ONNX_VARIANTS:
        start = time.perf_counter()
        convert_to_onnx(store, parse_name(MODEL), precision=precision, method=method)
        print(f"  built {MODEL}:{default_tag(precision, method)} in {time.perf_counter() - start:.1f} s", flush=True)
        names.append(f"{MODEL}:{default_tag(precision, method)}")
    return names


def decode_section(store: Store, rounds: int) -> None:
    print(f"\n## Decode tok/s (tg{N_GEN}): edgeslm bench vs onnxruntime-genai's own loop, interleaved, {rounds} rounds")
    threads = physical_cores()
    print(f"  onnxruntime-genai with edgeslm's session options ({threads} intra-op threads, 1 inter-op), and with")
    print("  the folder's own (onnxruntime's defaults); bench starts from token 0 (SmolLM2 adds no BOS)")
    for tag in ("onnx-int4", "onnx-int8", "onnx-fp32"):
        folder = store.model_path(store.get(parse_name(f"{MODEL}:{tag}")))
        ours, same, defaults = [], [], []
        for _ in range(rounds):
            same.append(native_decode(folder, 0, threads))
            ours.append(ours_decode(folder))
            defaults.append(native_decode(folder, 0, 0))
        o, n, d = statistics.median(ours), statistics.median(same), statistics.median(defaults)
        print(f"  {tag:10} edgeslm {o:7.1f}   onnxruntime-genai {n:7.1f} (defaults {d:7.1f})   "
              f"ratio {o / n:.3f} (goal >= 0.95; vs defaults {o / d:.2f})")


def fidelity_section(store: Store, text_path: Path, chunks: int) -> None:
    print(f"\n## Evaluation fidelity: ONNX int4 vs F16 GGUF, {chunks} chunks x 512")
    ref = store.get(parse_name(f"{MODEL}:f16"))
    model = store.get(parse_name(f"{MODEL}:onnx-int4"))
    settings = EvalSettings(ctx=512, chunks=chunks, speed=False)
    start = time.perf_counter()
    ours = evaluate(store, model.name, ref.name, load_text(text_path), settings, force=True)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    argv = [str(store.model_path(ref)), str(store.model_path(model)), str(text_path), "512", str(chunks)]
    out = subprocess.run(
        [sys.executable, "-c", INDEPENDENT_KLD, *argv], check=True, capture_output=True, text=True, timeout=3600
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    theirs_s = time.perf_counter() - start
    assert ours.kld_mean is not None
    diff = (ours.kld_mean - theirs["kld_mean"]) / theirs["kld_mean"]
    print(f"  edgeslm mean KLD {ours.kld_mean:.6f} ({ours_s:.1f} s)   independent {theirs['kld_mean']:.6f} "
          f"over {theirs['positions']} positions ({theirs_s:.1f} s)")
    print(f"  relative difference {100 * diff:+.3f}%  (goal within 1 %)")


def native_section(store: Store, names: list[str], rounds: int) -> None:
    from benchmarks.parity import native, ours

    bin_dir = native_bin()
    threads = physical_cores()
    print(f"\n## Native llama-bench vs edgeslm bench, GGUF variants, {rounds} alternating rounds (medians)")
    # (peak RSS is left to ``make parity``: ru_maxrss of children is a maximum over this whole run)
    print("| model | native pp512 | edgeslm pp512 | ratio | native tg128 | edgeslm tg128 | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        manifest = store.get(parse_name(name))
        if manifest.format.value != "gguf":
            continue
        path = store.model_path(manifest)
        nat, our = [], []
        for _ in range(rounds):  # alternating, each in a fresh process
            nat.append(native(bin_dir, path, 512, 128, threads))
            our.append(ours(path, 512, 128, threads))
        med = [statistics.median(float(r[i] or 0) for r in nat) for i in range(2)]
        mine = [statistics.median(float(r[i] or 0) for r in our) for i in range(2)]
        print(f"| {name} | {med[0]:.1f} | {mine[0]:.1f} | {mine[0] / med[0]:.3f} | {med[1]:.1f} | {mine[1]:.1f} | "
              f"{mine[1] / med[1]:.3f} |")


def table_section(
    store: Store, names: list[str], text_path: Path, chunks: int, what: str = "Every variant of both runtimes"
) -> None:
    print(f"\n## {what} vs {MODEL}:f16 ({chunks} chunks x 512 of WikiText-2; tg128, pp512)\n")
    text, settings = load_text(text_path), EvalSettings(ctx=512, chunks=chunks)
    reference = parse_name(f"{MODEL}:f16")
    results = []
    for name in names:
        ref = None if name.endswith(":f16") else reference
        results.append(evaluate(store, parse_name(name), ref, text, settings))
    print(markdown_table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sections", default="decode,fidelity,native,table", help="which to run, comma-separated")
    args = parser.parse_args()
    text_path = WIKITEXT if WIKITEXT.is_file() else ROOT / "edgeslm" / "data" / "wikitext-2-sample.txt"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "models")
        print(f"# ONNX Runtime beside llama.cpp, {MODEL}; text {text_path.name}")
        names = build(store)
        wanted = set(args.sections.split(","))
        if "decode" in wanted:
            decode_section(store, args.rounds)
        if "fidelity" in wanted:
            fidelity_section(store, text_path, args.chunks)
        if "native" in wanted:
            native_section(store, names, args.rounds)
        if "table" in wanted:
            table_section(store, names, text_path, args.chunks)


if __name__ == "__main__":
    main()
