"""Speculative decoding side by side: edgeslm's prompt lookup (its own longest match, and
llama.cpp's ngram-simple and ngram-map-k) against its plain decoding, and native llama-server's
ngram-simple and ngram-map-k against plain llama-server, same prompts, same files, one run.

Prompts: ``benchmarks/data/speculative_prompts.json`` — input-grounded (fix a WikiText
paragraph's spacing, copy its quoted sentences, rename a function in a code file) and open-ended
(a story, a question). Each is rendered once (the model's chat template, or the completion text
for a base model) and both tools get the same tokens. Greedy, ``-n`` tokens. edgeslm runs plain
and each kind in turn (median of ``--reps``); llama-server runs once per ``--spec-type`` (none,
ngram-simple, ngram-map-k; the same n and m), each prompt ``--reps`` times,
``timings.predicted_per_second``.

Goals (issue 17): input-grounded >= 1.5x plain; open-ended >= 0.95x; speed-up >= native's.

    .venv/bin/python benchmarks/speculative.py [--models smollm2-135m-instruct] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeslm_cli import native_bin  # noqa: E402
from parity import model_files  # noqa: E402
from serve_throughput import running  # noqa: E402

from edgeslm.engines.base import SamplingParams  # noqa: E402
from edgeslm.generation import Model, generate, load  # noqa: E402
from edgeslm.speculation import LookupConfig, SpecStats  # noqa: E402

PROMPTS = ROOT / "benchmarks" / "data" / "speculative_prompts.json"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
GREEDY = SamplingParams(temperature=0)


def prompt_texts(model: Model, prompts: Path | None = None) -> list[tuple[str, str, str]]:
    """(name, kind, text) for each prompt of ``prompts`` (default: PROMPTS), rendered for ``model``."""
    data = json.loads((prompts or PROMPTS).read_text())
    text = WIKITEXT.read_bytes().decode()
    fill = {"paragraph": text[2000:3200].replace("\r", ""), "paragraph2": text[5200:6400].replace("\r", ""),
            "code": data["code"]}
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


KINDS = ("lookup", "ngram-simple", "ngram-map-k")  # edgeslm's; native llama-server has the last two
NATIVE = ("ngram-simple", "ngram-map-k")


def native_runs(server: Path, path: Path, prompts: list[list[int]], args: argparse.Namespace,
                spec: str, draft_model: Path | None = None) -> list[dict[str, Any]]:
    """For each prompt (token ids, as edgeslm decodes them): median predicted tok/s, drafted,
    accepted, the tokens (llama-server, greedy; ``spec``: its --spec-type)."""
    sizes = [f"--spec-{spec}-size-n", str(args.draft_n), f"--spec-{spec}-size-m", str(args.draft_m)]
    cmd = [str(server), "-m", str(path), "--port", str(args.port), "-c", str(args.ctx), "-np", "1", "-t",
           str(args.threads), "--spec-type", spec, *(sizes if spec.startswith("ngram") else [])]
    if draft_model is not None:
        cmd += ["-md", str(draft_model), "-tb", str(args.threads)]
    url = f"http://127.0.0.1:{args.port}"
    out = []
    with running(cmd, url, "/health"):
        for ids in prompts:
            runs = []
            for _ in range(args.reps):
                body = {"prompt": ids, "n_predict": args.n, "temperature": 0, "cache_prompt": False,
                        "return_tokens": True}
                runs.append(httpx.post(f"{url}/completion", json=body, timeout=600).json())
            t = runs[-1]["timings"]
            out.append({"tps": statistics.median(r["timings"]["predicted_per_second"] for r in runs),
                        "drafted": t.get("draft_n", 0), "accepted": t.get("draft_n_accepted", 0),
                        "tokens": tuple(runs[-1]["tokens"])})
    return out


def measure(name: str, path: Path, bin_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per prompt: plain tok/s, and per kind (edgeslm's three, native's two) the speed-up over the
    same tool's plain decoding, accepted/drafted, and whether the text is the plain text."""
    configs = {k: LookupConfig.of(k, args.draft_n, args.draft_m) for k in KINDS}
    model = load(str(path), ctx=args.ctx, threads=args.threads)  # the file llama-server gets
    rows = []
    try:
        texts = prompt_texts(model)
        ids = [token_ids(model, t) for _, _, t in texts]
        ours(model, texts[0][2], 8, configs["lookup"])  # the verify costs are measured once, at the first run
        for prompt, kind, text in texts:
            tps: dict[str, list[float]] = {k: [] for k in ("plain", *KINDS)}
            row: dict[str, Any] = {"model": name, "prompt": prompt, "kind": kind}
            for _ in range(args.reps):  # plain and each kind in turn, so drift hits all alike
                speed, plain_ids, _ = ours(model, text, args.n, None)
                tps["plain"].append(speed)
                for k in KINDS:
                    speed, spec_ids, stats = ours(model, text, args.n, configs[k])
                    tps[k].append(speed)
                    row[k] = {"drafted": stats.drafted, "accepted": stats.accepted, "same": spec_ids == plain_ids}
            row["plain"] = statistics.median(tps["plain"])
            for k in KINDS:
                row[k]["x"] = statistics.median(tps[k]) / row["plain"]
            row["plain_ids"] = plain_ids
            rows.append(row)
    finally:
        model.close()
    plain = native_runs(bin_dir / "llama-server", path, ids, args, "none")
    for row, p in zip(rows, plain, strict=True):
        row |= {"n_plain": p["tps"], "as_native": row.pop("plain_ids") == p["tokens"]}
    for k in NATIVE:
        for row, p, s in zip(rows, plain, native_runs(bin_dir / "llama-server", path, ids, args, k), strict=True):
            row[f"native {k}"] = {"x": s["tps"] / p["tps"], "drafted": s["drafted"], "accepted": s["accepted"],
                                  "same": s["tokens"] == p["tokens"]}
    return rows


def batch_agreement(model: Model, ids: list[int], plain: list[int], size: int) -> tuple[float, int]:
    """Decode ``plain`` after the prompt one token at a time and in batches of ``size`` (as a verify
    step does): the largest logit difference between the two, and how often the argmax differs."""
    import numpy as np

    from edgeslm.engines.llamacpp.bindings import lc

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
          "of the three grounded prompts:\n")
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
          "| native speed-up | native accepted/drafted |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for pair in pairs:
        target_name, draft_name = pair.split("=")
        target = load(target_name, ctx=args.ctx, threads=args.threads)
        draft = load_draft(draft_name, target, threads=args.threads)
        rows = []
        try:
            texts = prompt_texts(target, args.prompts)
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
                             plain.tokens == spec.tokens))
        finally:
            draft.close()
            target.close()
        paths = [resolve_model(n, settings).path for n in (target_name, draft_name)]
        ids_all = [r[1] for r in rows]
        native_plain = native_runs(bin_dir / "llama-server", paths[0], ids_all, args, "none")
        native_spec = native_runs(
            bin_dir / "llama-server", paths[0], ids_all, args, "draft-simple", draft_model=paths[1]
        )
        for (prompt, _, p, s, stats, same), np_, ns in zip(rows, native_plain, native_spec, strict=True):
            print(f"| {target_name} | {draft_name} | {prompt} | {p:.1f} | {s:.1f} | {s / p:.2f}x | "
                  f"{stats.accepted}/{stats.drafted} | {same} | {ns['tps'] / np_['tps']:.2f}x | "
                  f"{ns['accepted']}/{ns['drafted']} |")


def _client(url: str, name: str, texts: list[list[int]], n: int, first: int, rounds: int,
            log: list[tuple[float, float, int]]) -> None:
    """One client: every prompt ``rounds`` times, from ``first`` on; (start, end, tokens) of each."""
    for i in range(rounds * len(texts)):
        body = {"model": name, "prompt": texts[(first + i) % len(texts)], "max_tokens": n, "temperature": 0}
        start = time.perf_counter()
        tokens = httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["usage"]["completion_tokens"]
        log.append((start, time.perf_counter(), tokens))


def steady_rate(logs: list[list[tuple[float, float, int]]]) -> float:
    """Tokens per second while every client is busy: from when the last client's first reply ends
    to when the first client's last reply ends (a reply's tokens spread evenly over its time), so
    neither the start, where all prompts arrive at once, nor the tail, where fewer clients are left
    and a reply that finished early leaves its slot idle, counts."""
    lo, hi = max(log[0][1] for log in logs), min(log[-1][1] for log in logs)
    tokens = sum(t * max(0.0, min(e, hi) - max(s, lo)) / (e - s) for log in logs for s, e, t in log)
    return tokens / (hi - lo)


def _metric(text: str, name: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + "{"))


def serve_aggregate(name: str, args: argparse.Namespace) -> None:
    """edgeslm serve with 4 busy slots, with and without --draft lookup: each of 4 clients sends the
    five prompts in turn, twice (greedy, ``-n`` tokens); aggregate generated tokens per second
    while all four are busy (``steady_rate``)."""
    import threading

    model = load(name, ctx=args.ctx, threads=args.threads)
    try:
        texts = [token_ids(model, t) for _, _, t in prompt_texts(model)]
    finally:
        model.close()
    url, results, metrics = f"http://127.0.0.1:{args.port}", {"plain": [], "lookup": []}, ""
    for _ in range(args.serve_reps):  # servers with and without drafts in turn, so drift hits both alike
        for label, extra in (("plain", []), ("lookup", ["--draft", "lookup"])):
            flags = ["--parallel", "4", "--ctx", str(args.ctx), "--threads", str(args.threads), "--no-prompt-cache"]
            cmd = [sys.executable, "-m", "edgeslm", "serve", "--port", str(args.port), "--preload", name, *flags,
                   *extra]
            with running(cmd, url, "/api/version"):
                _client(url, name, texts, args.n, 0, 1, [])  # warm: the model loaded, the verify costs measured
                logs: list[list[tuple[float, float, int]]] = [[] for _ in range(4)]
                workers = [threading.Thread(target=_client, args=(url, name, texts, args.n, c, 2, logs[c]))
                           for c in range(4)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join(timeout=3600)
                if any(w.is_alive() for w in workers):
                    raise SystemExit(f"a client of {label} was still waiting after an hour; the server hung")
                results[label].append(steady_rate(logs))
                if extra:
                    metrics = httpx.get(f"{url}/metrics").text
    drafted, accepted = (
        _metric(metrics, "edgeslm_draft_tokens_total"),
        _metric(metrics, "edgeslm_draft_accepted_tokens_total"),
    )
    plain, lookup = statistics.median(results["plain"]), statistics.median(results["lookup"])
    print(
        f"\nserve, 4 busy slots, {name}: plain {plain:.1f} tok/s, --draft lookup {lookup:.1f} tok/s "
        f"({lookup / plain:.2f}x; runs {[round(x, 1) for x in results['plain']]} and "
        f"{[round(x, 1) for x in results['lookup']]}); drafts accepted {accepted:.0f}/{drafted:.0f} (last run)"
    )


def report(rows: list[dict[str, Any]]) -> None:
    columns = [*KINDS, *(f"native {k}" for k in NATIVE)]
    print(f"| model | prompt | kind | plain tok/s | native plain tok/s | {' | '.join(columns)} |")
    print("|---|---|---|---:|---:|" + "---:|" * len(columns))
    for r in rows:
        cells = [f"{r[c]['x']:.2f}× {r[c]['accepted']}/{r[c]['drafted']}{'' if r[c]['same'] else ' ≠'}"
                 for c in columns]
        print(f"| {r['model']} | {r['prompt']} | {r['kind']} | {r['plain']:.1f} | {r['n_plain']:.1f} | "
              f"{' | '.join(cells)} |")
    print("\n(speed-up over the same tool's plain decoding, accepted/drafted; ≠: the text differs from plain)")
    print(f"edgeslm's plain text = native plain text on {sum(r['as_native'] for r in rows)}/{len(rows)} prompts")
    for kind in ("grounded", "open"):
        for c in columns:
            x = [r[c]["x"] for r in rows if r["kind"] == kind]
            print(f"{kind:8} {c:20} geomean {statistics.geometric_mean(x):.2f}x  min {min(x):.2f}x  max {max(x):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("-n", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8493)
    parser.add_argument("--draft-n", type=int, default=LookupConfig().n, help="every kind's n (edgeslm and native)")
    parser.add_argument("--draft-m", type=int, default=LookupConfig().m)
    parser.add_argument("--sections", default="speed,lossless,draft,serve",
                        help="speed (lookup), lossless (per type), draft (draft models), serve (4 slots)")
    parser.add_argument("--pairs", nargs="*", default=["smollm2-135m-instruct:f16=smollm2-135m-instruct:q8_0",
                        "smollm2-135m-instruct:f16=smollm2-135m-instruct:q4_0"],
                        help="draft: TARGET=DRAFT stored models")
    parser.add_argument("--prompts", type=Path, help="draft: a prompt file (default: data/speculative_prompts.json; "
                        "data/code_prompts.json for code models)")
    parser.add_argument("--serve-reps", type=int, default=2, help="serve: runs with and without drafts, in turn")
    parser.add_argument("--batch", type=int, default=8, help="lossless: the verify batch size compared")
    parser.add_argument("--types", nargs="*", default=["smollm2-135m-instruct:f16", "smollm2-135m-instruct:q8_0",
                        "smollm2-135m-instruct:q4_0", "smollm2-135m-instruct:latest", "smollm2-135m-instruct:q4_k_m",
                        "gemma3-270m:latest"], help="lossless: stored models compared")
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    print(f"greedy, {args.n} tokens, {args.threads} threads, n {args.draft_n} m {args.draft_m}, "
          f"median of {args.reps}\n")
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
