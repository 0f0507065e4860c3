"""The optimize report: results.json, report.md, report.html (opens offline) and pareto.png."""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import OutputFileError
from ..evaluate.report import new_figure, save_size_kld_plot, scatter_runtimes
from ..units import format_bytes, format_mib
from .constraints import Metrics, Verdict
from .core import Candidate, OptimizeResult

POOR_KLD = 0.5  # a winner this far from the reference gets a warning when no KLD limit was set
HEADERS = (
    "rank", "model", "runtime", "recipe", "size", "memory", "mean KLD", "KLD p99", "same top-1", "PPL", "pp t/s",
    "tg t/s", "peak RSS", "tasks", "verdict",
)


def _num(value: float | None, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def table_rows(result: OptimizeResult) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for v in result.ranking.verdicts:
        c, m = result.candidate(v.metrics.name), v.metrics
        r, speed = c.result, c.result.speed
        ppl = f"{r.ppl:.3f}" + (f" ({100 * m.ppl_increase:+.1f}%)" if c.kind != "reference" else "")
        rows.append((
            str(v.rank) if v.rank else "-", c.name, r.runtime, c.recipe, format_bytes(m.file_size),
            format_bytes(m.memory),
            "0 (reference)" if c.kind == "reference" else f"{m.kld['mean']:.5f} ± {m.kld_err:.5f}",
            _num(m.kld["p99"], "{:.4f}"), f"{100 * m.same_top:.2f}%", ppl, _num(m.pp_tps, "{:.1f}"),
            _num(m.tg_tps, "{:.1f}"), format_mib(speed.peak_rss) if speed else "", _tasks(m),
            "winner" if v.rank == 1 else ("fits" if v.fits else "fails"),
        ))
    return rows


def _tasks(m: Metrics) -> str:
    """Task accuracy where measured (optimize --min-pass / --min-tool-acc)."""
    scores = (("pass@1", m.pass_at_1), ("tools", m.tool_acc))
    return ", ".join(f"{label} {100 * v:.1f}%" for label, v in scores if v is not None)


def reasons(result: OptimizeResult) -> list[str]:
    return [f"{v.metrics.name}: {v.reason}" for v in result.ranking.verdicts]


def summary(result: OptimizeResult) -> list[str]:
    """A few sentences: the verdict, and what stands in the way when nothing fits."""
    lines = []
    winner = result.ranking.winner
    if winner is not None:
        c = result.candidate(winner.metrics.name)
        lines.append(f"Winner: {c.name} ({c.recipe}), {_facts(winner)}.")
        if result.tagged:
            lines.append(f"Tagged {result.tagged}.")
        m = winner.metrics
        k = result.params.constraints
        quality_limits = k.max_kld or k.min_same_top is not None or k.max_ppl_increase is not None
        if m.kld["mean"] > POOR_KLD and not quality_limits:
            lines.append(
                f"Beware: it meets your constraints but its quality is poor (mean KLD {m.kld['mean']:.3g}, "
                f"perplexity {100 * m.ppl_increase:+.0f}%); add --max-kld or --max-ppl-increase, or raise the budget."
            )
    else:
        lines.append("No candidate meets every constraint.")
        lines.append(f"Binding constraint: {result.ranking.binding}.")
        if result.ranking.closest:
            closest = next(v for v in result.ranking.verdicts if v.metrics.name == result.ranking.closest)
            lines.append(f"Closest: {closest.metrics.name} ({closest.reason}).")
    return lines


def _facts(v: Verdict) -> str:
    m = v.metrics
    speed = f", {m.tg_tps:.1f} tok/s generation" if m.tg_tps else ""
    return f"{format_bytes(m.file_size)}, mean KLD {m.kld['mean']:.5f}, same top-1 {100 * m.same_top:.2f}%{speed}"


def commands(result: OptimizeResult) -> list[str]:
    winner = result.ranking.winner
    if winner is None:
        return []
    c = result.candidate(winner.metrics.name)
    out = [] if c.command == "(stored)" else [c.command]
    if result.tagged:
        out.append(f"edgeslm cp {c.name} {result.tagged}")
    return out


def cleanup(result: OptimizeResult) -> str | None:
    """The command that would remove the variants that lost (optimize itself deletes nothing)."""
    winner = result.ranking.winner.metrics.name if result.ranking.winner else None
    losers = [c for c in result.candidates if c.kind in ("uniform", "mixed", "onnx", "mlx") and c.name != winner]
    if not losers:
        return None
    total = sum(c.metrics.file_size for c in losers)
    return f"edgeslm rm {' '.join(c.name for c in losers)}   # frees up to {format_bytes(total)}"


def to_json(result: OptimizeResult) -> dict[str, Any]:
    p = result.params
    mixed = None
    if result.mixed is not None:
        mx = result.mixed
        mixed = {
            "name": mx.name, "budget": mx.budget, "predicted_kld": mx.plan.predicted_kld,
            "predicted_size": mx.plan.predicted_size, "types": mx.types, "calibration_tokens": mx.calibration_tokens,
            "sensitivity": mx.sensitivity, "mismatches": list(mx.mismatches),
            "assignment": {n: q.name for n, q in mx.plan.assignment},
        }
    return {
        "model": result.model, "reference": result.reference, "text": result.text,
        "calibration_text": result.calibration_text,
        "constraints": {**asdict(p.constraints), "described": p.constraints.describe()},
        "eval": asdict(p.eval), "calibration": asdict(p.calibration), "types": [q.name for q in p.types],
        "winner": result.ranking.winner.metrics.name if result.ranking.winner else None,
        "tagged": result.tagged, "binding": result.ranking.binding, "closest": result.ranking.closest,
        "ranking": [
            {"name": v.metrics.name, "rank": v.rank, "fits": v.fits, "reason": v.reason,
             "violations": [asdict(x) for x in v.violations], "metrics": asdict(v.metrics),
             "kind": result.candidate(v.metrics.name).kind, "recipe": result.candidate(v.metrics.name).recipe,
             "command": result.candidate(v.metrics.name).command}
            for v in result.ranking.verdicts
        ],
        "results": [c.result.to_dict() for c in result.candidates], "mixed": mixed, "notes": list(result.notes),
        "seconds": result.seconds,
    }


def markdown(result: OptimizeResult, plot_name: str | None) -> str:
    lines = [f"# Optimize {result.model}", ""]
    lines += summary(result) + [""]
    lines += [f"Reference: {result.reference}. Quality on {result.text} "
              f"({result.params.eval.chunks} chunks of {result.params.eval.ctx} tokens); "
              f"measured in {result.seconds:.0f} s.", ""]
    described = result.params.constraints.describe()
    lines += ["## Constraints", ""] + ([f"- {d}" for d in described] or ["- none"]) + [""]
    if plot_name:
        lines += [f"![size against KL-divergence]({plot_name})", ""]
    lines += ["## Candidates", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result)] + [""]
    lines += ["## Why each lost", ""] + [f"- {r}" for r in reasons(result)] + [""]
    if result.mixed is not None:
        lines += _mixed_md(result)
    if cmds := commands(result):
        lines += ["## Reproduce the winner", "", "```sh"] + cmds + ["```", ""]
    if rm := cleanup(result):
        lines += [
            "## Cleaning up",
            "",
            "Every candidate stays in the store. To remove those that lost:",
            "",
            "```sh",
            rm,
        ]
        lines += ["```", ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(lines)


def _mixed_md(result: OptimizeResult) -> list[str]:
    mx = result.mixed
    assert mx is not None
    c = next((c for c in result.candidates if c.name == mx.name), None)
    measured = f"{c.metrics.kld['mean']:.5f}" if c else "?"
    total = sum(mx.types.values())
    return [
        "## Mixed precision", "",
        f"Planned for {format_bytes(mx.budget)}: {mx.name}, {format_bytes(mx.plan.predicted_size)} predicted, "
        f"mean KLD {mx.plan.predicted_kld:.5f} predicted (sum of per-tensor predictions from "
        f"{mx.calibration_tokens:,} calibration tokens), {measured} measured on the evaluation chunks.", "",
        "| type | parameters | share |", "|---|---|---|",
        *[f"| {t} | {n:,} | {100 * n / total:.1f}% |" for t, n in mx.types.items()], "",
    ]


def html_page(result: OptimizeResult, png: bytes | None) -> str:
    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(x)}</td>" for x in r) + "</tr>" for r in table_rows(result))
    head = "".join(f"<th>{e(h)}</th>" for h in HEADERS)
    img = (
        f'<img alt="size against KL-divergence" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png
        else ""
    )
    items = "".join(f"<li>{e(x)}</li>" for x in reasons(result))
    constraints = "".join(f"<li>{e(x)}</li>" for x in result.params.constraints.describe()) or "<li>none</li>"
    cmds = "\n".join(commands(result))
    notes = "".join(f"<li>{e(x)}</li>" for x in result.notes)
    mixed = ""
    if result.mixed is not None:
        mixed = "<h2>Mixed precision</h2>" + "".join(f"<p>{e(x)}</p>" for x in _mixed_md(result)[2:3])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Optimize {e(result.model)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:nth-child(2),td:nth-child(3),td:last-child{{text-align:left}}
pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}img{{max-width:100%}}</style></head><body>
<h1>Optimize {e(result.model)}</h1>{"".join(f"<p>{e(x)}</p>" for x in summary(result))}
<p>Reference: {e(result.reference)}; quality on {e(result.text)}; measured in {result.seconds:.0f} s.</p>
<h2>Constraints</h2><ul>{constraints}</ul>{img}
<h2>Candidates</h2><table><tr>{head}</tr>{rows}</table>
<h2>Why each lost</h2><ul>{items}</ul>{mixed}
<h2>Reproduce the winner</h2><pre>{e(cmds) or "(no winner)"}</pre>
<h2>Notes</h2><ul>{notes}</ul></body></html>
"""


def pareto_plot(result: OptimizeResult, path: Path) -> Path:
    """Size against mean KLD (log), generation tok/s as colour, constraints as lines, winner starred."""
    cands = list(result.candidates)
    positive = [c.metrics.kld["mean"] for c in cands if c.metrics.kld["mean"] > 0]
    floor = min(positive) / 4 if positive else 1e-4
    xs = [c.metrics.file_size / 1e6 for c in cands]
    ys = [max(c.metrics.kld["mean"], floor) for c in cands]
    tps = [c.metrics.tg_tps or 0.0 for c in cands]
    fig, ax = new_figure((9, 5.5))
    front = _front(cands)
    ax.step([c.metrics.file_size / 1e6 for c in front], [max(c.metrics.kld["mean"], floor) for c in front],
            where="post", color="0.6", lw=1, zorder=1, label="Pareto front")
    fits = {v.metrics.name for v in result.ranking.verdicts if v.fits}
    edges = ["k" if c.name in fits else "r" for c in cands]
    scatter = scatter_runtimes(ax, xs, ys, tps, [c.result.runtime for c in cands], size=70, edgecolors=edges)
    for c, x, y in zip(cands, xs, ys, strict=True):
        label = c.name.rsplit(":", 1)[-1] + (f"\n{c.metrics.tg_tps:.0f} tok/s" if c.metrics.tg_tps else "")
        ref = c.kind == "reference"  # drawn at the bottom; labelled leftwards, as it is often the largest
        ax.annotate(
            label + ("\n(reference, KLD 0)" if ref else ""),
            (x, y),
            textcoords="offset points",
            xytext=(-6, 4) if ref else (6, 4),
            ha="right" if ref else "left",
            fontsize=8,
        )
    _constraint_lines(ax, result)
    if (w := result.ranking.winner) is not None:
        c = result.candidate(w.metrics.name)
        point = ([c.metrics.file_size / 1e6], [max(c.metrics.kld["mean"], floor)])
        style: dict[str, Any] = {"marker": "*", "s": 420, "facecolors": "none", "edgecolors": "red", "zorder": 4}
        ax.scatter(*point, label=f"winner: {c.name}", linewidths=1.8, **style)
    ax.legend(loc="best", fontsize=8)
    title = f"{result.model}: size against quality (red edge: misses a constraint)"
    return save_size_kld_plot(fig, ax, scatter, tps, title, path)


def _front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both size and mean KLD, by size."""
    out, best = [], math.inf
    for c in sorted(cands, key=lambda c: (c.metrics.file_size, c.metrics.kld["mean"])):
        if c.metrics.kld["mean"] < best:
            out.append(c)
            best = c.metrics.kld["mean"]
    return out


def _constraint_lines(ax: Any, result: OptimizeResult) -> None:
    c = result.params.constraints
    if c.max_size is not None:
        ax.axvline(c.max_size / 1e6, color="tab:red", ls="--", lw=1, label=f"max size {format_bytes(c.max_size)}")
    for stat, limit in c.max_kld:
        if stat == "mean" and limit > 0:
            ax.axhline(limit, color="tab:orange", ls="--", lw=1, label=f"max mean KLD {limit:g}")
    if result.mixed is not None and result.mixed.budget != c.max_size:
        ax.axvline(result.mixed.budget / 1e6, color="tab:purple", ls=":", lw=1, label="size budget from --max-memory")


def write_report(result: OptimizeResult, directory: Path) -> list[Path]:
    """Write the four files into ``directory`` (created); each via a temp file and a rename."""
    try:
        return _write(result, directory)
    except OSError as exc:
        raise OutputFileError(
            f"cannot write the report to {directory}: {exc.strerror or exc}; every result is kept in the store, "
            "so running optimize again with another report folder writes it at once",
            params="report",
        ) from None


def _write(result: OptimizeResult, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    png_path = pareto_plot(result, directory / "pareto.png")
    png = png_path.read_bytes()
    files = {
        "results.json": json.dumps(to_json(result), indent=2, default=str),
        "report.md": markdown(result, png_path.name),
        "report.html": html_page(result, png),
    }
    written = [png_path]
    for name, text in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, directory / name)
        written.append(directory / name)
    return written
