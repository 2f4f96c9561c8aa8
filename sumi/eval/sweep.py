"""Quality against cost: run a grid of sampler settings over one prompt set, find the Pareto front, draw it.

Each grid point is a dict of :func:`sumi.sampling.generate` options (sampler, steps, temperature, …) measured
with :func:`sumi.eval.quality.sample_quality` on the same prompts and seeds. Cost is the NFE per sample: the
forward calls one ``generate`` call made (every row of a batch takes part in each), averaged over batches.
A point is on the Pareto front when no other point has both fewer-or-equal NFE and lower-or-equal Gen PPL
(one of them strictly). Entropy is shown next to Gen PPL because low-entropy, repetitive text also scores well.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sumi.eval.quality import Judge, QualitySummary, sample_quality


@dataclass
class SweepPoint:
    """One grid point: its label, its options and the measured summary."""

    label: str
    options: dict
    summary: QualitySummary
    nfe_per_sample: float
    """Mean forward calls per ``generate`` call."""

    def to_json(self) -> dict:
        s = self.summary
        return {"label": self.label, "options": self.options, "nfe": self.nfe_per_sample, "gen_ppl": s.gen_ppl,
                "gen_ppl_se": s.gen_ppl_se, "judge_nll": s.judge_nll, "judge_nll_se": s.judge_nll_se,
                "entropy": s.entropy, "entropy_se": s.entropy_se, "distinct": s.to_json()["distinct"],
                "noise_share": s.noise_share, "empty": s.empty, "samples": s.samples, "wall_s": s.wall_s}


def label_of(options: dict) -> str:
    """A short name for a grid point: sampler, then the options that define it."""
    parts = [str(options.get("sampler", "default"))]
    if options.get("preset"):
        parts[0] += f" ({options['preset']})"
    short = {"num_denoising_steps": "K", "temperature": "T", "tokens_per_step": "k", "top_p": "p",
             "canvas_length": "C"}
    for key, value in options.items():
        if key in ("sampler", "preset") or value is None:
            continue
        parts.append(f"{short.get(key, key)}={value}")
    return " ".join(parts)


def run_sweep(model: torch.nn.Module, tokenizer, prompts: Sequence[str], judge: Judge, grid: Sequence[dict], *,
              base: dict | None = None, batch_size: int = 32, seed: int = 0, on_point=None) -> list[SweepPoint]:
    """Measure every grid point (``base`` options, then the point's own) on the same prompts and seeds.

    A point with ``"preset": "release"`` starts from the released sampler's defaults instead of sumi's."""
    from sumi.sampling.config import RELEASE

    points = []
    batches = math.ceil(len(prompts) / batch_size)
    for options in grid:
        merged = {**(base or {}), **options}
        sampler_options = {k: v for k, v in merged.items() if k != "preset"}
        config = RELEASE if merged.get("preset") == "release" else None
        _, summary = sample_quality(model, tokenizer, prompts, judge, batch_size=batch_size, seed=seed,
                                    config=config, **sampler_options)
        point = SweepPoint(label=label_of(options), options=merged, summary=summary,
                           nfe_per_sample=summary.nfe / batches)
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


def pareto_front(points: Sequence[SweepPoint], entropy_floor: float | None = None) -> list[int]:
    """Indices of the points no other point beats on both NFE and Gen PPL, by increasing NFE.

    With ``entropy_floor`` only points whose mean unigram entropy reaches it take part (repetitive samples have a
    low Gen PPL and would otherwise make the front)."""
    admissible = [i for i, p in enumerate(points) if p.summary.gen_ppl == p.summary.gen_ppl
                  and (entropy_floor is None or p.summary.entropy >= entropy_floor)]
    front = []
    for i in admissible:
        p = points[i]
        dominated = any(
            q.nfe_per_sample <= p.nfe_per_sample and q.summary.gen_ppl <= p.summary.gen_ppl
            and (q.nfe_per_sample < p.nfe_per_sample or q.summary.gen_ppl < p.summary.gen_ppl)
            for q in (points[j] for j in admissible if j != i))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i].nfe_per_sample)


def write_sweep(path: str | Path, points: Sequence[SweepPoint], extra: dict | None = None,
                entropy_floor: float | None = None) -> Path:
    from sumi._io import atomic_write_text

    front = set(pareto_front(points, entropy_floor))
    doc = {**(extra or {}), "points": [{**p.to_json(), "pareto": i in front} for i, p in enumerate(points)]}
    atomic_write_text(Path(path), json.dumps(doc, indent=1) + "\n")
    return Path(path)


def plot_sweep(points: Sequence[SweepPoint], path: str | Path, *, title: str = "sample quality against cost",
               reference: SweepPoint | None = None, entropy_floor: float | None = None,
               anchors: dict[str, float] | None = None) -> Path:
    """Two panels sharing the NFE axis (log₂): Gen PPL ± s.e. (the Pareto front joined) and unigram entropy.

    Points are coloured by sampler family; ``reference`` (e.g. the released sampler) draws dashed guides. With
    ``entropy_floor`` the front is drawn among the points whose entropy reaches it (also drawn). ``anchors``
    (label → Gen PPL, e.g. of held-out text and of random ids) are drawn as dotted lines to place the points.
    """
    from sumi.eval.plots import _figure, _save

    fig = _figure(8.0, 7.0)
    top = fig.add_subplot(2, 1, 1)
    bottom = fig.add_subplot(2, 1, 2, sharex=top)
    families = sorted({p.options.get("sampler", "default") for p in points})
    colours = {f: f"C{i % 10}" for i, f in enumerate(families)}
    for family in families:
        chosen = [p for p in points if p.options.get("sampler", "default") == family]
        xs = [p.nfe_per_sample for p in chosen]
        top.errorbar(xs, [p.summary.gen_ppl for p in chosen], yerr=[p.summary.gen_ppl_se for p in chosen],
                     fmt="o", color=colours[family], capsize=2, markersize=4, label=family)
        bottom.errorbar(xs, [p.summary.entropy for p in chosen], yerr=[p.summary.entropy_se for p in chosen],
                        fmt="o", color=colours[family], capsize=2, markersize=4, label=family)
    front = [points[i] for i in pareto_front(points, entropy_floor)]
    if front:
        top.plot([p.nfe_per_sample for p in front], [p.summary.gen_ppl for p in front], "-", color="black",
                 linewidth=1, alpha=0.6,
                 label="Pareto front" + (" (entropy above the floor)" if entropy_floor is not None else ""))
        top.scatter([p.nfe_per_sample for p in front], [p.summary.gen_ppl for p in front], s=80,
                    facecolors="none", edgecolors="black", zorder=3)
    if reference is not None:
        top.axhline(reference.summary.gen_ppl, linestyle="--", color="grey", linewidth=1,
                    label=f"reference: {reference.label}")
    for i, (name, gen_ppl) in enumerate((anchors or {}).items()):
        top.axhline(gen_ppl, linestyle=":", color=f"C{(len(families) + i) % 10}", linewidth=1.2, label=name)
    if entropy_floor is not None:
        bottom.axhline(entropy_floor, linestyle=":", color="grey", linewidth=1, label="entropy floor")
    top.set_ylabel("Gen PPL under the judge (exp nats/token)")
    top.set_yscale("log")
    top.set_title(textwrap.fill(title, 90), fontsize=9)  # wrapped: a long title would be clipped at the edges
    top.grid(alpha=0.3, which="both")
    top.legend(fontsize=7, loc="upper right")
    bottom.set_xlabel("NFE per sample (forward calls)")
    bottom.set_ylabel("unigram entropy per sample (nats)")
    bottom.set_xscale("log", base=2)
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(fontsize=7, loc="lower right")
    return _save(fig, Path(path))
