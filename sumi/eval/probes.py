"""Inference probes (``docs/design.md`` §5): how generation quality and cost move with the canvas length, the
number of denoising steps and the tokens committed per step, and what happens inside one run.

Sweeps: each setting generates from the same prompts with the same seed and records the NELBO of the generated
text given its prompt under the model (nats/token, K = ``score_timesteps``, on one fixed scoring canvas so
settings are comparable; lower = the model finds its own output more likely), the fraction of generated tokens
that are a fixed point of the denoiser (argmax of a clean-canvas forward reproduces them), distinct-token ratio,
steps run, forward calls and wall time.

Dynamics (one run per prompt, batch 1): per step the committed positions (commit-order heatmap), token changes
per position (flips), the mean predictive entropy and argmax probability over the generated span, and the
rank-frequency profile of the argmax tokens. Everything goes to ``probe.json`` plus PNG plots.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sumi.errors import ConfigError, InputError
from sumi.eval import plots
from sumi.eval.nelbo import NelboConfig, canvas_size, logits_at, nelbo_of_ids
from sumi.model import SumiOutput
from sumi.sampling import SamplingConfig, generate
from sumi.sampling.config import RELEASE

logger = logging.getLogger(__name__)

SWEEPS = ("canvas", "steps", "tokens-per-step")
SCORE_CANVAS = 2048
"""Scoring canvas for the sweeps' NELBO (capped at the model's max positions), the same for every setting."""


@dataclass(frozen=True)
class ProbeConfig:
    """What to probe. Empty sweep lists are filled from ``max_new_tokens`` and the model's max positions."""

    prompts: tuple[str, ...] = ("In the beginning",)
    max_new_tokens: int = 64
    """New tokens per run (the anchor's budget)."""
    sweeps: tuple[str, ...] = SWEEPS
    """Which sweeps to run: any of ``canvas``, ``steps``, ``tokens-per-step``."""
    dynamics: bool = True
    """Record one run step by step per prompt."""
    canvas_lengths: tuple[int, ...] = ()
    """Canvas sweep values (default: doubling from the smallest canvas that fits to max positions)."""
    steps: tuple[int, ...] = ()
    """Step sweep values (default: new/4, new/2, new, 2·new)."""
    tokens_per_step: tuple[int, ...] = ()
    """Adaptive tokens-per-step sweep values (default 1, 2, 4, 8; steps = ⌈new / tokens_per_step⌉)."""
    sampler: str = "adaptive"
    temperature: float = 0.0
    canvas_length: int = 2048
    """Canvas of the steps / tokens-per-step sweeps and of the dynamics run (capped at max positions)."""
    score_timesteps: int = 32
    """K of the NELBO that scores each generated text."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ConfigError("give at least one prompt (strings)")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        unknown = set(self.sweeps) - set(SWEEPS)
        if unknown:
            raise ConfigError(f"unknown sweep(s) {sorted(unknown)}; choose from {SWEEPS} or 'all'")
        for name in ("canvas_lengths", "steps", "tokens_per_step"):
            if any(int(v) <= 0 for v in getattr(self, name)):
                raise ConfigError(f"{name} values must be positive, got {getattr(self, name)}")
        if self.score_timesteps <= 0:
            raise ConfigError(f"score_timesteps must be positive, got {self.score_timesteps}")
        self.sampling()  # the sampler options are validated where they are defined

    def sampling(self) -> SamplingConfig:
        """The sampler options every probe run starts from (sweeps then vary canvas, steps, tokens per step): the
        released sampler's (:data:`~sumi.sampling.config.RELEASE`: the tail after the anchor denoised, one token per
        step), whose canvas and step costs these probes measure."""
        return RELEASE.replace(max_new_tokens=self.max_new_tokens, sampler=self.sampler, temperature=self.temperature,
                               canvas_length=self.canvas_length, seed=self.seed)


@dataclass
class ProbeReport:
    config: dict
    sweeps: dict[str, list[dict]] = field(default_factory=dict)
    dynamics: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# ============================================================================================ helpers
class _EntropyTap(torch.nn.Module):
    """Wraps the model for the sampler and keeps the predictive entropy [B, C] of every forward."""

    def __init__(self, model) -> None:
        super().__init__()
        self.inner, self.config = model, model.config
        self.entropy: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor) -> SumiOutput:
        logits = self.inner(input_ids).logits[..., :self.config.vocab_size].float()
        log_p = torch.log_softmax(logits, dim=-1)
        self.entropy.append(-(log_p.exp() * log_p).sum(-1).cpu())
        return SumiOutput(logits=logits)


@torch.inference_mode()
def _fixed_point_rate(model, canvas: torch.Tensor, prompt_lengths: list[int], sequences: list[list[int]]) -> float:
    """Fraction of generated tokens equal to the argmax of one forward on the final canvas."""
    hits = total = 0
    for row, (p, seq) in enumerate(zip(prompt_lengths, sequences)):
        if not seq:
            continue
        positions = torch.arange(p, p + len(seq), device=canvas.device)[None]
        argmax = logits_at(model, canvas[row:row + 1], positions).argmax(-1)[0].cpu()
        hits += int((argmax == torch.tensor(seq)).sum())
        total += len(seq)
    return hits / total if total else math.nan


def _default_canvases(min_canvas: int, max_canvas: int) -> list[int]:
    values, c = [], min_canvas
    while c < max_canvas:
        values.append(c)
        c *= 2
    return values + [max_canvas]


# ============================================================================================ probes
class Prober:
    """Runs the probes of one model; ``progress`` is an optional tqdm-like bar updated once per run."""

    def __init__(self, model, tokenizer, config: ProbeConfig, progress=None) -> None:
        self.model, self.tokenizer, self.config, self.progress = model.eval(), tokenizer, config, progress
        self.max_positions = int(model.config.max_position_embeddings)
        self.prompt_ids = [tokenizer.encode(p, add_bos=True) for p in config.prompts]
        longest = max(len(p) for p in self.prompt_ids)
        self.min_canvas = longest + config.max_new_tokens + 2  # prompt, budget, the EOS/BOS anchor
        if self.min_canvas > self.max_positions:
            raise InputError(
                f"prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) + 2 anchor tokens = "
                f"{self.min_canvas} exceed the model's {self.max_positions} positions; shorten them"
            )
        self.canvas = max(self.min_canvas, canvas_size(model, config.canvas_length))

    def plan(self) -> dict[str, list[int]]:
        c, new = self.config, self.config.max_new_tokens
        plan = {}
        if "canvas" in c.sweeps:
            values = c.canvas_lengths or _default_canvases(self.min_canvas, min(self.max_positions, 2048))
            too_small = [v for v in values if v < self.min_canvas]
            if too_small:
                raise InputError(f"canvas lengths {too_small} are below the {self.min_canvas} ids the prompt, "
                                 f"{new} new tokens and the anchor need")
            plan["canvas"] = sorted({min(int(v), self.max_positions) for v in values})
        if "steps" in c.sweeps:
            plan["steps"] = sorted(set(c.steps or {max(1, new // 4), max(1, new // 2), new, 2 * new}))
        if "tokens-per-step" in c.sweeps:
            plan["tokens-per-step"] = sorted(set(c.tokens_per_step or (1, 2, 4, 8)))
        return plan

    def num_runs(self) -> int:
        return sum(len(v) for v in self.plan().values()) + (len(self.prompt_ids) if self.config.dynamics else 0)

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update(1)

    def generate_and_score(self, *, canvas: int, steps: int, tokens_per_step: int) -> dict:
        c = self.config
        start = time.perf_counter()
        out = generate(self.model, self.prompt_ids, c.sampling(), num_denoising_steps=steps,
                       tokens_per_step=tokens_per_step, canvas_length=canvas)
        wall = time.perf_counter() - start
        requests = [(p, s) for p, s in zip(self.prompt_ids, out.sequences) if s]
        nelbo = stderr = math.nan
        if requests:
            config = NelboConfig(num_timesteps=c.score_timesteps, canvas_length=SCORE_CANVAS, seed=c.seed)
            raw = nelbo_of_ids(self.model, requests, config)
            tokens = sum(r.num_tokens for r in raw)
            nelbo = sum(r.total_nats for r in raw) / tokens
            stderr = math.sqrt(sum(r.total_stderr ** 2 for r in raw)) / tokens
        generated = [t for s in out.sequences for t in s]
        self._tick()
        return {
            "canvas_length": canvas, "steps": steps, "tokens_per_step": tokens_per_step,
            "nelbo": nelbo, "nelbo_stderr": stderr,
            "fixed_point_rate": _fixed_point_rate(self.model, out.canvas, out.prompt_lengths, out.sequences),
            "distinct_ratio": len(set(generated)) / len(generated) if generated else math.nan,
            "generated_tokens": len(generated), "steps_run": out.steps_run, "nfe": out.nfe, "wall_s": wall,
            "texts": [self.tokenizer.decode(s, skip_special_tokens=True) for s in out.sequences],
        }

    def sweep(self, name: str, values: list[int]) -> list[dict]:
        new = self.config.max_new_tokens
        records = []
        for v in values:
            if name == "canvas":
                records.append(self.generate_and_score(canvas=v, steps=new, tokens_per_step=1))
            elif name == "steps":
                records.append(self.generate_and_score(canvas=self.canvas, steps=v, tokens_per_step=1))
            else:
                records.append(self.generate_and_score(canvas=self.canvas, steps=math.ceil(new / v),
                                                       tokens_per_step=v))
        return records

    def dynamics(self, prompt: list[int]) -> dict:
        """One run step by step (batch 1): commit matrix, flips, entropy/confidence, token frequencies."""
        c = self.config
        tap = _EntropyTap(self.model)
        steps_log: list[dict] = []
        p = len(prompt)

        def record(info) -> None:
            steps_log.append({
                "committed": info.committed[0, p:].cpu(), "changed": info.changed[0, p:].cpu(),
                "argmax": info.argmax[0, p:].cpu(), "argmax_prob": info.argmax_prob[0, p:].cpu(),
                "entropy": tap.entropy[info.nfe - 1][0, p:], "log_snr_t": info.log_snr_t,
            })

        out = generate(tap, [prompt], c.sampling(), canvas_length=self.canvas, callback=record)
        budget = out.budgets[0]
        committed = torch.stack([s["committed"] for s in steps_log]).numpy()  # [steps, C − P]
        changed = torch.stack([s["changed"] for s in steps_log]).numpy()
        argmax = torch.stack([s["argmax"] for s in steps_log])[:, :budget]
        vocab = int(self.model.config.vocab_size)
        predicted = torch.bincount(argmax.reshape(-1), minlength=vocab)
        output = torch.bincount(torch.tensor(out.sequences[0], dtype=torch.long), minlength=vocab)
        last_commit = [int(np.flatnonzero(col)[-1]) if col.any() else -1 for col in committed[:, :budget].T]
        top = torch.topk(predicted, k=min(10, vocab))
        self._tick()
        return {
            "prompt": self.tokenizer.decode(prompt, skip_special_tokens=True),
            "text": self.tokenizer.decode(out.sequences[0], skip_special_tokens=True),
            "prompt_length": p, "budget": budget, "canvas_length": self.canvas, "steps_run": out.steps_run,
            "nfe": out.nfe,
            "commits_per_step": committed.sum(1).astype(int).tolist(),
            "last_commit_step": last_commit,
            "flips_per_position": changed.sum(0).astype(int).tolist(),
            "changed_per_step": changed.sum(1).astype(int).tolist(),
            "mean_entropy": [float(s["entropy"][:budget].mean()) for s in steps_log],
            "mean_argmax_prob": [float(s["argmax_prob"][:budget].mean()) for s in steps_log],
            "log_snr_t": [s["log_snr_t"] for s in steps_log],
            "top_predicted_tokens": [{"id": int(i), "text": self.tokenizer.decode([int(i)]), "count": int(n)}
                                     for n, i in zip(top.values, top.indices) if n > 0],
            "_committed": committed, "_predicted": predicted.tolist(), "_output": output.tolist(),
        }


def run_probes(model, tokenizer, out_dir: str | Path, config: ProbeConfig | None = None, *,
               show_progress: bool = False) -> ProbeReport:
    """Run the configured sweeps and dynamics; write ``probe.json`` and PNG plots into ``out_dir``."""
    config = config or ProbeConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    prober = Prober(model, tokenizer, config)
    plan = prober.plan()
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=prober.num_runs(), desc="probes", unit="run")
        prober.progress = bar
    report = ProbeReport(config=asdict(config))
    labels = {"canvas": ("canvas_length", "canvas length"), "steps": ("steps", "denoising steps"),
              "tokens-per-step": ("tokens_per_step", "tokens per step")}
    try:
        for name, values in plan.items():
            records = prober.sweep(name, values)
            report.sweeps[name] = records
            key, label = labels[name]
            report.files.append(str(plots.sweep_plot(records, key, label, out / f"sweep_{name}.png")))
        if config.dynamics:
            for n, prompt in enumerate(prober.prompt_ids):
                dyn = prober.dynamics(prompt)
                committed, predicted, output = dyn.pop("_committed"), dyn.pop("_predicted"), dyn.pop("_output")
                report.dynamics.append(dyn)
                start = dyn["prompt_length"]
                files = [
                    plots.commit_order_plot(committed, start, out / f"dynamics{n}_commit_order.png", dyn["budget"]),
                    plots.flips_plot(np.asarray(dyn["flips_per_position"]), start, out / f"dynamics{n}_flips.png"),
                    plots.entropy_plot(dyn["mean_entropy"], dyn["mean_argmax_prob"], dyn["changed_per_step"],
                                       out / f"dynamics{n}_entropy.png"),
                    plots.frequency_plot(predicted, output, out / f"dynamics{n}_token_frequency.png"),
                ]
                report.files.extend(str(f) for f in files)
    finally:
        if bar is not None:
            bar.close()
    json_path = out / "probe.json"
    report.files.append(str(json_path))
    json_path.write_text(json.dumps(_clean(asdict(report)), indent=2, allow_nan=False) + "\n")
    logger.info("probe results in %s", out)
    return report


def _clean(value):
    """JSON-safe copy: NaN/inf → null, numpy scalars → Python numbers, tuples → lists."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
