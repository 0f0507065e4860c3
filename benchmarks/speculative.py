"""Speculative decoding side by side: edgeslm's prompt lookup against its plain decoding, and
native llama-server's ngram-simple against plain llama-server, same prompts, same files, one run.

Prompts: ``benchmarks/data/speculative_prompts.json`` — input-grounded (fix a WikiText
paragraph's spacing, copy its quoted sentences, rename a function in a code file) and open-ended
(a story, a question). Each is rendered once (the model's chat template, or the completion text
for a base model) and both tools get the same tokens. Greedy, ``-n`` tokens. edgeslm alternates
plain and lookup runs (median of ``--reps``); llama-server runs twice (``--spec-type none`` and
``ngram-simple``, same n/m), each prompt ``--reps`` times, ``timings.predicted_per_second``.

Goals (issue 17): input-grounded >= 1.5x plain; open-ended >= 0.95x; speed-up >= native's.

    .venv/bin/python benchmarks/speculative.py [--models smollm2-135m-instruct] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from parity import model_files  # noqa: E402
from serve_throughput import running  # noqa: E402

from edgeslm.engines.base import SamplingParams  # noqa: E402
from edgeslm.generation import Model, generate, load  # noqa: E402
from edgeslm.speculation import LookupConfig, SpecStats  # noqa: E402

PROMPTS = ROOT / "benchmarks" / "data" / "speculative_prompts.json"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
GREEDY = SamplingParams(temperature=0)


def prompt_texts(model: Model) -> list[tuple[str, str, str]]:
    """(name, kind, text) for each prompt, rendered for ``model``."""
    data = json.loads(PROMPTS.read_text())
    text = WIKITEXT.read_bytes().decode()
    fill = {"paragraph": text[2000:3200].replace("\r", ""), "paragraph2": text[5200:6400].replace("\r", ""),
            "code": data["code"]}  # fmt: skip
    out = []
    for p in data["prompts"]:
        if model.has_chat_template:
            rendered = model.render([{"role": "user", "content": p["chat"].format(**fill)}])
        else:
            rendered = model.engine.bos_text() + p["completion"].format(**fill)
        out.append((p["name"], p["kind"], rendered))
    return out


def token_ids(model: Model, text: str) -> list[int]:
    return model.engine.tokenize(text, add_special=False, parse_special=True)  # BOS is in the rendered text


def ours(model: Model, text: str, n: int, draft: LookupConfig | None) -> tuple[float, tuple[int, ...], SpecStats]:
    ids = token_ids(model, text)
    stats = SpecStats()
    result = generate(model, ids, max_tokens=n, sampling=GREEDY, draft=draft, spec_stats=stats)
    return result.last.generation_tps, result.tokens, stats


def native_runs(server: Path, path: Path, prompts: list[list[int]], args: argparse.Namespace,
                spec: bool, draft_model: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """For each prompt (token ids, as edgeslm decodes them): median predicted tok/s, drafted,
    accepted, the tokens (llama-server, greedy)."""
    lookup = ["--spec-ngram-simple-size-n", str(args.draft_n), "--spec-ngram-simple-size-m", str(args.draft_m)]
    cmd = [str(server), "-m", str(path), "--port", str(args.port), "-c", str(args.ctx), "-np", "1", "-t",
           str(args.threads), "--spec-type", "ngram-simple" if spec else "none", *lookup]  # fmt: skip
    if spec and draft_model is not None:
        cmd[cmd.index("ngram-simple")] = "draft-simple"
        cmd += ["-md", str(draft_model), "-tb", str(args.threads)]
    url = f"http://127.0.0.1:{args.port}"
    out = []
    with running(cmd, url, "/health"):
        for ids in prompts:
            runs = []
            for _ in range(args.reps):
                body = {"prompt": ids, "n_predict": args.n, "temperature": 0, "cache_prompt": False,
                        "return_tokens": True}  # fmt: skip
                runs.append(httpx.post(f"{url}/completion", json=body, timeout=600).json())
            t = runs[-1]["timings"]
            out.append({"tps": statistics.median(r["timings"]["predicted_per_second"] for r in runs),
                        "drafted": t.get("draft_n", 0), "accepted": t.get("draft_n_accepted", 0),
                        "tokens": tuple(runs[-1]["tokens"])})  # fmt: skip
    return out


def measure(name: str, path: Path, bin_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    config = LookupConfig(args.draft_n, args.draft_m)
    model = load(str(path), ctx=args.ctx, threads=args.threads)  # the file llama-server gets
    rows = []
    try:
        texts = prompt_texts(model)
        token_ids_of = {p: token_ids(model, t) for p, _, t in texts}
        ours(model, texts[0][2], 8, config)  # the verify costs are measured once, at the first lookup run
        for prompt, kind, text in texts:
            plain_tps, spec_tps = [], []
            for _ in range(args.reps):
                tps, plain_ids, _ = ours(model, text, args.n, None)
                plain_tps.append(tps)
                tps, spec_ids, stats = ours(model, text, args.n, config)
                spec_tps.append(tps)
            rows.append({"model": name, "prompt": prompt, "kind": kind, "plain": statistics.median(plain_tps),
                         "spec": statistics.median(spec_tps), "drafted": stats.drafted, "accepted": stats.accepted,
                         "declined": stats.declined, "same": spec_ids == plain_ids,
                         "plain_ids": plain_ids})  # fmt: skip
    finally:
        model.close()
    ids = [token_ids_of[p] for p, _, _ in texts]
    plain = native_runs(bin_dir / "llama-server", path, ids, args, spec=False)
    spec = native_runs(bin_dir / "llama-server", path, ids, args, spec=True)
    for row, p, s in zip(rows, plain, spec, strict=True):
        row |= {"n_plain": p["tps"], "n_spec": s["tps"], "n_drafted": s["drafted"], "n_accepted": s["accepted"],
                "n_same": p["tokens"] == s["tokens"], "as_native": row.pop("plain_ids") == p["tokens"]}  # fmt: skip
    return rows


def batch_agreement(model: Model, ids: list[int], plain: list[int], size: int) -> tuple[float, int]:
    """Decode ``plain`` after the prompt one token at a time and in batches of ``size`` (as a verify
    step does): the largest logit difference between the two, and how often the argmax differs."""
    import numpy as np

    from edgeslm.engines.llamacpp_bindings import lc

    engine, seq = model.engine, ids + plain
    rows = []
    for step in (1, size):
        engine.prefill(ids)  # the prompt's last row predicts plain[0]
        got = [np.ctypeslib.as_array(lc.llama_get_logits_ith(engine._ctx, -1), shape=(engine.n_vocab,)).copy()]
        batch = lc.llama_batch_init(size, 0, 1)
        try:
            for start in range(len(ids), len(seq) - 1, step):
                chunk = seq[start : min(start + step, len(seq) - 1)]
                engine._fill_batch(batch, chunk, start, start)
                engine._decode(engine._ctx, batch)
                out = np.ctypeslib.as_array(lc.llama_get_logits(engine._ctx), shape=(len(chunk), engine.n_vocab))
                got.extend(out.copy())
        finally:
            lc.llama_batch_free(batch)
        rows.append(np.stack(got))
    single, batched = rows
    return float(np.abs(single - batched).max()), int((single.argmax(1) != batched.argmax(1)).sum())


def lossless(names: list[str], args: argparse.Namespace) -> None:
    """For each stored type: does a verify batch see the logits single steps see?"""
    print(f"\nBatched (verify batches of {args.batch}) against single-step logits along the plain greedy text "
          "of the three grounded prompts:\n")  # fmt: skip
    print("| model | max abs logit difference | argmax flips / positions |")
    print("|---|---:|---:|")
    for name in names:
        model = load(name, ctx=args.ctx, threads=args.threads)
        try:
            worst, flips, positions = 0.0, 0, 0
            for _, kind, text in prompt_texts(model):
                if kind != "grounded":
                    continue
                ids = model.engine.tokenize(text, add_special=False, parse_special=True)
                plain = list(generate(model, ids, max_tokens=args.n, sampling=GREEDY).tokens)
                diff, flipped = batch_agreement(model, ids, plain, args.batch)
                worst, flips, positions = max(worst, diff), flips + flipped, positions + len(plain)
            print(f"| {name} | {worst:.2e} | {flips} / {positions} |")
        finally:
            model.close()


def model_drafts(pairs: list[str], bin_dir: Path, args: argparse.Namespace) -> None:
    """TARGET=DRAFT pairs of stored models: edgeslm's draft-model decoding against its plain, and
    llama-server's draft-simple (its default depth 3) against its plain, on the same token ids."""
    from edgeslm.config import resolve_settings
    from edgeslm.generation import load_draft, resolve_model

    settings = resolve_settings()
    print("\n| target | draft | prompt | plain tok/s | draft tok/s | speed-up | accepted/drafted | identical "
          "| native speed-up | native accepted/drafted |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for pair in pairs:
        target_name, draft_name = pair.split("=")
        target = load(target_name, ctx=args.ctx, threads=args.threads)
        draft = load_draft(draft_name, target, threads=args.threads)
        rows = []
        try:
            texts = prompt_texts(target)
            for prompt, _, text in texts:
                ids = token_ids(target, text)
                plain_tps, spec_tps = [], []
                for _ in range(args.reps):
                    stats = SpecStats()
                    plain = generate(target, ids, max_tokens=args.n, sampling=GREEDY)
                    spec = generate(target, ids, max_tokens=args.n, sampling=GREEDY, draft=draft, spec_stats=stats)
                    plain_tps.append(plain.last.generation_tps)
                    spec_tps.append(spec.last.generation_tps)
                rows.append((prompt, ids, statistics.median(plain_tps), statistics.median(spec_tps), stats,
                             plain.tokens == spec.tokens))  # fmt: skip
        finally:
            draft.close()
            target.close()
        paths = [resolve_model(n, settings).path for n in (target_name, draft_name)]
        ids_all = [r[1] for r in rows]
        native_plain = native_runs(bin_dir / "llama-server", paths[0], ids_all, args, spec=False)
        native_spec = native_runs(bin_dir / "llama-server", paths[0], ids_all, args, spec=True, draft_model=paths[1])
        for (prompt, _, p, s, stats, same), np_, ns in zip(rows, native_plain, native_spec, strict=True):
            print(f"| {target_name} | {draft_name} | {prompt} | {p:.1f} | {s:.1f} | {s / p:.2f}x | "
                  f"{stats.accepted}/{stats.drafted} | {same} | {ns['tps'] / np_['tps']:.2f}x | "
                  f"{ns['accepted']}/{ns['drafted']} |")  # fmt: skip


def _client(url: str, name: str, texts: list[list[int]], n: int, first: int, totals: list[int]) -> None:
    """One client: every prompt once, from ``first`` on; generated tokens added to ``totals``."""
    for i in range(len(texts)):
        body = {"model": name, "prompt": texts[(first + i) % len(texts)], "max_tokens": n, "temperature": 0}
        totals.append(httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["usage"]["completion_tokens"])


def _metric(text: str, name: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + "{"))


def serve_aggregate(name: str, args: argparse.Namespace) -> None:
    """edgeslm serve with 4 busy slots, with and without --draft lookup: each of 4 clients sends the
    five prompts in turn (greedy, ``-n`` tokens); aggregate generated tokens per second of wall time."""
    import threading

    model = load(name, ctx=args.ctx, threads=args.threads)
    try:
        texts = [token_ids(model, t) for _, _, t in prompt_texts(model)]
    finally:
        model.close()
    url, results, metrics = f"http://127.0.0.1:{args.port}", {}, ""
    for label, extra in (("plain", []), ("lookup", ["--draft", "lookup"])):
        flags = ["--parallel", "4", "--ctx", str(args.ctx), "--threads", str(args.threads), "--no-prompt-cache"]
        cmd = [sys.executable, "-m", "edgeslm", "serve", "--port", str(args.port), "--preload", name, *flags, *extra]
        with running(cmd, url, "/api/version"):
            _client(url, name, texts, args.n, 0, [])  # warm: the model loaded, the verify costs measured
            totals: list[int] = []
            workers = [threading.Thread(target=_client, args=(url, name, texts, args.n, c, totals)) for c in range(4)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            results[label] = sum(totals) / (time.perf_counter() - start)
            metrics = httpx.get(f"{url}/metrics").text
    drafted, accepted = (
        _metric(metrics, "edgeslm_draft_tokens_total"),
        _metric(metrics, "edgeslm_draft_accepted_tokens_total"),
    )
    print(
        f"\nserve, 4 busy slots, {name}: plain {results['plain']:.1f} tok/s, --draft lookup "
        f"{results['lookup']:.1f} tok/s ({results['lookup'] / results['plain']:.2f}x); "
        f"drafts accepted {accepted:.0f}/{drafted:.0f}"
    )


def report(rows: list[dict[str, Any]]) -> None:
    print(
        "| model | prompt | kind | plain tok/s | lookup tok/s | speed-up | accepted/drafted | declined | identical "
        "| native plain | native ngram-simple | native speed-up | native accepted/drafted | native identical "
        "| plain = native plain |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['prompt']} | {r['kind']} | {r['plain']:.1f} | {r['spec']:.1f} | "
              f"{r['spec'] / r['plain']:.2f}x | {r['accepted']}/{r['drafted']} | {r['declined']} | {r['same']} | "
              f"{r['n_plain']:.1f} | {r['n_spec']:.1f} | {r['n_spec'] / r['n_plain']:.2f}x | "
              f"{r['n_accepted']}/{r['n_drafted']} | {r['n_same']} | {r['as_native']} |")  # fmt: skip
    for kind in ("grounded", "open"):
        ours_ = [r["spec"] / r["plain"] for r in rows if r["kind"] == kind]
        theirs = [r["n_spec"] / r["n_plain"] for r in rows if r["kind"] == kind]
        print(f"\n{kind}: edgeslm speed-up geomean {statistics.geometric_mean(ours_):.2f}x (min {min(ours_):.2f}x), "
              f"native {statistics.geometric_mean(theirs):.2f}x (min {min(theirs):.2f}x)", end="")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("-n", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8493)
    parser.add_argument("--draft-n", type=int, default=LookupConfig().n)
    parser.add_argument("--draft-m", type=int, default=LookupConfig().m)
    parser.add_argument("--sections", default="speed,lossless,draft,serve",
                        help="speed (lookup), lossless (per type), draft (draft models), serve (4 slots)")  # fmt: skip
    parser.add_argument("--pairs", nargs="*", default=["smollm2-135m-instruct:f16=smollm2-135m-instruct:q8_0",
                        "smollm2-135m-instruct:f16=smollm2-135m-instruct:q4_0"],
                        help="draft: TARGET=DRAFT stored models")  # fmt: skip
    parser.add_argument("--batch", type=int, default=8, help="lossless: the verify batch size compared")
    parser.add_argument("--types", nargs="*", default=["smollm2-135m-instruct:f16", "smollm2-135m-instruct:q8_0",
                        "smollm2-135m-instruct:q4_0", "smollm2-135m-instruct:latest", "smollm2-135m-instruct:q4_k_m",
                        "gemma3-270m:latest"], help="lossless: stored models compared")  # fmt: skip
    args = parser.parse_args()
    bin_dir = args.native_bin or Path(subprocess.check_output(
        ["bash", str(ROOT.parent / "shared" / "tools" / "build-native-llama.sh")], text=True).strip())  # fmt: skip
    print(f"greedy, {args.n} tokens, {args.threads} threads, lookup n {args.draft_n} m {args.draft_m}, "
          f"median of {args.reps}\n")  # fmt: skip
    sections = args.sections.split(",")
    if "speed" in sections:
        rows = []
        for name, path in model_files().items():
            if args.models is None or name in args.models:
                rows += measure(name, path, bin_dir, args)
        report(rows)
    if "lossless" in sections:
        lossless(args.types, args)
    if "draft" in sections:
        model_drafts(args.pairs, bin_dir, args)
    if "serve" in sections:
        for name in args.models or ["smollm2-135m-instruct", "gemma3-270m"]:
            serve_aggregate(name, args)


if __name__ == "__main__":
    main()
