"""Reports over kept evaluation results: rows for tables and the size-vs-quality plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..units import format_bytes
from .result import EvalResult

HEADERS = (
    "model",
    "runtime",
    "size",
    "bpw",
    "PPL",
    "vs ref",
    "mean KLD",
    "KLD 99%",
    "same top-1",
    "RMS Δp",
    "pp t/s",
    "tg t/s",
    "peak RSS",
)


def _fmt(value: Any, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def result_row(r: EvalResult) -> tuple[str, ...]:
    speed = r.speed
    kv = r.settings.get("kv", "f16")
    return (
        r.model + (f" (kv {kv})" if kv != "f16" else ""),
        r.runtime,
        format_bytes(r.file_size),
        _fmt(r.bits_per_weight, "{:.2f}"),
        f"{r.ppl:.3f} ± {r.ppl_err:.3f}",
        _fmt(r.ppl_base, "{:.3f}"),
        _fmt(r.kld_mean, "{:.5f}") + (_fmt(r.kld_err, " ± {:.5f}") if r.has_reference else ""),
        _fmt(r.kld.get("p99"), "{:.4f}"),
        _fmt(r.same_top and 100 * r.same_top, "{:.2f}%"),
        _fmt(r.dp_rms and 100 * r.dp_rms, "{:.3f}%"),
        _fmt(speed and speed.pp_tps, "{:.1f}"),
        _fmt(speed and speed.tg_tps, "{:.1f}"),
        _fmt(speed and speed.peak_rss / 2**20, "{:.1f} MiB"),
    )


def markdown_table(results: Sequence[EvalResult], extra: Mapping[str, Sequence[str]] | None = None,
                   extra_headers: Sequence[str] = ()) -> str:
    """The results as a Markdown table; ``extra``: more cells per model name (task accuracy)."""
    headers = (*HEADERS, *extra_headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join((*result_row(r), *(extra or {}).get(r.model, ("",) * len(extra_headers)))) + " |"
              for r in results]
    return "\n".join(lines) + "\n"


def new_figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure and axes, drawn off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=120)


def save_size_kld_plot(fig: Any, ax: Any, scatter: Any, tps: Sequence[float], title: str, path: Path) -> Path:
    """Axes of a size-against-KLD plot (log y), the tok/s colour bar, and the PNG."""
    import matplotlib.pyplot as plt

    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL-divergence vs reference (lower is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(tps):
        fig.colorbar(scatter, ax=ax, label="generation tok/s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# each runtime's marker in the size-against-quality plots (colour is generation tok/s)
RUNTIME_MARKERS = {"llama.cpp": "o", "onnxruntime": "s", "mlx": "^"}


def scatter_runtimes(
    ax: Any, xs: Sequence[float], ys: Sequence[float], tps: Sequence[float], runtimes: Sequence[str],
    *, size: float, edgecolors: Sequence[str] | None = None,
) -> Any:
    """One scatter per runtime (its own marker shape) on one colour scale; returns one for the colour bar."""
    from matplotlib.colors import Normalize

    measured = [t for t in tps if t > 0]
    norm = Normalize(vmin=min(measured, default=0), vmax=max(measured, default=1))
    several = len(set(runtimes)) > 1
    scatter = None
    for runtime in dict.fromkeys(runtimes):
        idx = [i for i, r in enumerate(runtimes) if r == runtime]
        scatter = ax.scatter(
            [xs[i] for i in idx], [ys[i] for i in idx], c=[tps[i] for i in idx], cmap="viridis", norm=norm, s=size,
            zorder=3, marker=RUNTIME_MARKERS.get(runtime, "D"), label=runtime if several else None,
            edgecolors=[edgecolors[i] for i in idx] if edgecolors else None,
        )
    return scatter


def plot(results: Sequence[EvalResult], path: Path, title: str, notes: Mapping[str, str] | None = None) -> Path:
    """Size (x) against mean KLD (y, log scale), each point labelled with its tg tok/s and ``notes``
    (task accuracy, by model name); marker: runtime."""
    points = [r for r in results if r.kld_mean is not None]
    fig, ax = new_figure((8, 5))
    sizes = [r.file_size / 1e6 for r in points]
    klds = [max(r.kld_mean or 0.0, 1e-6) for r in points]
    tps = [(r.speed.tg_tps or 0.0) if r.speed else 0.0 for r in points]
    runtimes = [r.runtime for r in points]
    scatter = scatter_runtimes(ax, sizes, klds, tps, runtimes, size=60)
    for r, x, y, t in zip(points, sizes, klds, tps, strict=True):
        label = r.model.rsplit(":", 1)[-1] + (f"\n{t:.0f} tok/s" if t else "")
        label += f"\n{notes[r.model]}" if notes and notes.get(r.model) else ""
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if len(set(runtimes)) > 1:
        ax.legend(loc="best", fontsize=8, title="runtime")
    return save_size_kld_plot(fig, ax, scatter, tps, title, path)
