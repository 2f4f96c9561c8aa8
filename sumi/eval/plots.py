"""PNG plots for the inference probes (matplotlib's object API on the Agg canvas: no pyplot, no global backend).

Each function takes plain lists/arrays (what :mod:`sumi.eval.probes` writes to JSON) and a path, and returns it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def _legend(ax, *more_axes, **kwargs) -> None:
    """One legend for the series of ``ax`` and of its twin axes (a twin's lines are otherwise left out)."""
    handles, labels = ax.get_legend_handles_labels()
    for other in more_axes:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    ax.legend(handles, labels, **kwargs)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def sweep_plot(records: list[dict], key: str, label: str, path: Path) -> Path:
    """NELBO of the generated text (± standard error) and wall time against the swept ``key``."""
    xs = [r[key] for r in records]
    nelbo = [r["nelbo"] for r in records]
    err = [0.0 if r["nelbo_stderr"] is None or math.isnan(r["nelbo_stderr"]) else r["nelbo_stderr"]
           for r in records]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(xs, nelbo, yerr=err, marker="o", color="tab:blue", capsize=3, label="NELBO of output")
    ax.set_xlabel(label)
    ax.set_ylabel("NELBO of generated text (nats/token)", color="tab:blue")
    if len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
    twin = ax.twinx()
    twin.plot(xs, [r["wall_s"] for r in records], marker="s", color="tab:red", label="wall time")
    twin.set_ylabel("wall time (s)", color="tab:red")
    _legend(ax, twin, fontsize=8)
    ax.set_title(f"sweep over {label}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def commit_order_plot(commit_matrix: np.ndarray, start: int, path: Path, budget: int | None = None) -> Path:
    """Heatmap [steps × positions]: the step index where a position was committed (blank = not that step),
    with the step of each position's last commit on top; the generated span [start, start + budget) is shaded
    and the EOS/BOS anchor after it marked."""
    steps, width = commit_matrix.shape
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    shown = np.where(commit_matrix, np.arange(steps)[:, None], np.nan)
    image = ax.imshow(shown, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                      extent=(start - 0.5, start + width - 0.5, -0.5, steps - 0.5))
    last = np.array([np.flatnonzero(col)[-1] if col.any() else np.nan for col in commit_matrix.T], dtype=float)
    ax.plot(np.arange(start, start + width), last, ".", color="tab:red", markersize=3, label="last commit")
    if budget is not None:
        ax.axvspan(start - 0.5, start + budget - 0.5, color="tab:orange", alpha=0.12, label="generated span")
        ax.axvline(start + budget, color="tab:orange", linestyle="--", linewidth=1, label="EOS/BOS anchor")
    ax.set_xlabel("canvas position")
    ax.set_ylabel("step")
    ax.set_title("commit order (colour = step of each commit)")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(image, ax=ax, label="step")
    return _save(fig, path)


def flips_plot(flips: np.ndarray, start: int, path: Path) -> Path:
    """How many times each position's token changed over the run."""
    fig = _figure(8.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(start, start + len(flips)), flips, width=1.0, color="tab:purple", label="changes of the token")
    ax.set_xlabel("canvas position")
    ax.set_ylabel("token changes (count)")
    ax.legend(fontsize=8)
    ax.set_title(f"token flips per position (total {int(flips.sum())})")
    return _save(fig, path)


def entropy_plot(entropy: list[float], confidence: list[float], changed: list[int], path: Path) -> Path:
    """Mean predictive entropy, mean argmax probability and changed tokens per step."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(len(entropy))
    ax.plot(steps, entropy, color="tab:blue", label="mean entropy (nats)")
    ax.set_xlabel("step")
    ax.set_ylabel("entropy (nats)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(steps, confidence, color="tab:green", label="mean argmax prob")
    twin.bar(steps, np.asarray(changed, dtype=float) / max(max(changed, default=1), 1), alpha=0.2,
             color="tab:gray", label="changed tokens (scaled)")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("probability / changed tokens (fraction of the step maximum)")
    _legend(ax, twin, fontsize=8)
    ax.set_title("denoising dynamics over steps")
    return _save(fig, path)


def frequency_plot(predicted_counts: list[int], output_counts: list[int], path: Path) -> Path:
    """Rank-frequency profile (log-log) of the argmax tokens over all steps and of the final output."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for counts, label in ((predicted_counts, "argmax over all steps"), (output_counts, "final output")):
        c = np.sort(np.asarray([x for x in counts if x > 0], dtype=float))[::-1]
        if c.size:
            ax.loglog(np.arange(1, c.size + 1), c / c.sum(), marker=".", label=label)
    ax.set_xlabel("rank (1 = most frequent token)")
    ax.set_ylabel("relative frequency (fraction of tokens)")
    ax.set_title("frequency profile of predicted tokens")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
