"""all-MiniLM-L6-v2 as edgeslm serves it, beside the reference computations, in one run.

- **Parity**: 200 sentences of WikiText-2 (test split, 8 to 60 words each) through ``edgeslm serve``'s
  ``/v1/embeddings`` (32 a request) against a plain transformers computation on the pinned checkpoint
  (F32, mean pooling over the attention mask, L2-normalised, as the model card computes it) and against
  native ``llama-server --embedding`` on the same GGUF: cosine per sentence, and how many sentences have
  the same 10 nearest neighbours among the 200 (as a set, and in the same order: neighbours whose
  similarities differ in the sixth decimal swap places between any two runtimes).
- **Variants**: the F16 file ``pull`` converts, the checkpoint converted to F32, ``quantize`` to Q8_0
  and Q4_0; per variant its size, the cosine of its embeddings of the 200 sentences to transformers',
  and ``eval --task retrieval`` (recall@5 and MRR on the kept WikiText set).
- **Speed**: sentences/s embedding the same 200 sentences, batch 32: sentence-transformers (``encode``,
  torch on the CPU), edgeslm's server, llama-server; each the best of ``--rounds`` after a warm-up, the
  runtimes alternating, every one on ``--threads`` threads.

    .venv/bin/python benchmarks/embeddings.py [--rounds 3] [--write docs/serve.md]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import edgeslm, native_bin  # noqa: E402
from parity import BENCH_HOME, pinned_file  # noqa: E402
from serve_throughput import running  # noqa: E402

MODEL = "all-minilm-l6-v2"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
BATCH = 32
PARITY = ["| compared with | sentences | min cosine | mean cosine | same 10 nearest (as a set) "
          "| same 10 nearest, in order |", "|---|---:|---:|---:|---:|---:|"]
VARIANTS = ["| variant | size | cosine to transformers: min / mean | recall@5 | MRR |",
            "|---|---:|---:|---:|---:|"]
SPEED = ["| runtime | batch | sentences/s | vs sentence-transformers |", "|---|---:|---:|---:|"]


def sentences(count: int) -> list[str]:
    """WikiText-2 test sentences of 8 to 60 words, its tokenisation spaces undone, in file order."""
    text = WIKITEXT.read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        if not line.strip() or line.strip().startswith("="):
            continue
        for s in re.split(r"(?<= \.) ", line.strip()):
            s = re.sub(r" @(.)@ ", r"\1", s).replace(" ,", ",").replace(" .", ".").replace(" 's", "'s")
            if 8 <= len(s.split()) <= 60:
                out.append(s)
        if len(out) >= count:
            break
    return out[:count]


def checkpoint(dest: Path) -> Path:
    """The pinned checkpoint folder, fetched from its mirror and checked file by file as pull does."""
    from edgeslm.sources.checkpoint_folder import checkout

    return checkout(f"{MODEL}:latest", dest / "model")


def transformers_vectors(folder: Path, texts: list[str], threads: int) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    for i in range(0, len(texts), BATCH):
        enc = tok(texts[i: i + BATCH], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out)


def served(url: str, texts: list[str], model: str = MODEL) -> np.ndarray:
    vectors = []
    with httpx.Client(timeout=600) as http:
        for i in range(0, len(texts), BATCH):
            r = http.post(f"{url}/v1/embeddings", json={"model": model, "input": texts[i: i + BATCH]})
            r.raise_for_status()
            vectors += [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def neighbours(v: np.ndarray, k: int = 10) -> np.ndarray:
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def parity_row(label: str, ours: np.ndarray, ref: np.ndarray) -> str:
    cos = np.sum(ours * ref, axis=1)
    a, b = neighbours(ours), neighbours(ref)
    in_order = int(np.sum(np.all(a == b, axis=1)))
    as_set = sum(set(x) == set(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))
    n = len(ours)
    return f"| {label} | {n} | {cos.min():.6f} | {cos.mean():.6f} | {as_set} of {n} | {in_order} of {n} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--port", type=int, default=8497)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    texts = sentences(args.sentences)
    gguf = pinned_file(MODEL)
    edgeslm(BENCH_HOME, "quantize", MODEL, "--type", "q8_0,q4_0")
    ours_url, native_url = f"http://127.0.0.1:{args.port}", f"http://127.0.0.1:{args.port + 1}"
    serve = [sys.executable, "-m", "edgeslm", "--home", str(BENCH_HOME), "serve", "--port", str(args.port),
             "--threads", str(args.threads), "--preload", MODEL]
    native = [str(native_bin(args.native_bin) / "llama-server"), "-m", str(gguf), "--port", str(args.port + 1),
              "--embedding", "--pooling", "mean", "-t", str(args.threads), "-c", "4096", "--alias", MODEL]
    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        folder = checkpoint(Path(tmp))
        edgeslm(BENCH_HOME, "convert", str(folder), "--outtype", "f32", "--name", f"{MODEL}:f32")
        ref = transformers_vectors(folder, texts, args.threads)
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu")
        with running(serve, ours_url, "/api/version"), running(native, native_url, "/health"):
            ours, theirs = served(ours_url, texts), served(native_url, texts)
            variants = {tag: served(ours_url, texts, f"{MODEL}:{tag}") for tag in ("f32", "q8_0", "q4_0")}
            served(ours_url, texts)  # the default model's runner back (the variants took turns in its place)
            rates = alternating({
                "st": lambda: st.encode(texts, batch_size=BATCH, normalize_embeddings=True),
                "ours": lambda: served(ours_url, texts),
                "native": lambda: served(native_url, texts),
            }, len(texts), args.rounds)
    parity = [parity_row("transformers (F32, mean pooling, normalised)", ours, ref),
              parity_row("llama-server --embedding (same GGUF)", ours, theirs)]
    st_label = f"sentence-transformers {_version('sentence_transformers')} (torch, CPU, F32)"
    speed = [f"| {st_label} | {BATCH} | {rates['st']:.0f} | 1.00 |",
             f"| edgeslm serve, /v1/embeddings (F16 GGUF) | {BATCH} | {rates['ours']:.0f} | "
             f"{rates['ours'] / rates['st']:.2f} |",
             f"| llama-server --embedding (same GGUF) | {BATCH} | {rates['native']:.0f} | "
             f"{rates['native'] / rates['st']:.2f} |"]
    rows = [variant_row("latest", ours, ref, "F16 (as pulled)")]
    rows += [variant_row(tag, v, ref, tag.upper()) for tag, v in variants.items()]
    print(f"{MODEL} (F16 GGUF from the pinned checkpoint), {len(texts)} WikiText-2 sentences, {args.threads} threads\n")
    print("\n\n".join("\n".join(t) for t in ([*PARITY, *parity], [*VARIANTS, *rows], [*SPEED, *speed])))
    tables.write_all(args.write, "embeddings.py:variants", [*VARIANTS, *rows])
    tables.write_all(args.write, "embeddings.py:parity", [*PARITY, *parity])
    tables.write_all(args.write, "embeddings.py:speed", [*SPEED, *speed])


def alternating(runs: dict[str, Callable[[], object]], count: int, rounds: int) -> dict[str, float]:
    """Sentences/s of each run, the best of ``rounds`` after a warm-up, the runs taking turns."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = max(best[key], count / (time.perf_counter() - start))
    return best


def variant_row(tag: str, v: np.ndarray, ref: np.ndarray, label: str) -> str:
    info = json.loads(edgeslm(BENCH_HOME, "show", f"{MODEL}:{tag}", "--json"))
    kept = json.loads(edgeslm(BENCH_HOME, "eval", f"{MODEL}:{tag}", "--task", "retrieval", "--json"))[0]
    cos = np.sum(v * ref, axis=1)
    return (f"| {label} | {info['file_size'] / 1e6:.1f} MB | {cos.min():.5f} / {cos.mean():.5f} | "
            f"{100 * kept['score']:.1f} % ({kept['passed']}/{kept['problems']}) | {kept['mrr']:.3f} |")


def _version(module: str) -> str:
    import importlib

    return str(getattr(importlib.import_module(module), "__version__", ""))


if __name__ == "__main__":
    main()
