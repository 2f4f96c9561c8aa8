"""The sampler loop on one canvas: the released Sumi samplers (``docs/design.md`` §4), fast and observable.

The loop owns the canvas, the RNG and a per-row logits cache. One step k (of K) moves from log-SNR λ_t = λ_k to
λ_s = λ_{k+1} (see :mod:`sumi.sampling.schedule`). Beyond the release:

* **logit reuse**: a row whose canvas did not change keeps its logits (the model does not see λ), so only
  changed rows are forwarded; ``nfe`` counts forward calls actually made;
* **early stop** (deterministic samplers only: greedy, adaptive with T = 0): a step that changes no token of
  a row proves the row is a fixed point, so once every row is fixed the remaining steps would be no-ops;
  ``threshold`` stops once every free position is committed (its own fixed point), whatever T;
* **greedy tail** (any sampler): the last step sets every free position to its argmax;
* ``callback(StepInfo)`` after every step (return True to stop) and an optional recorded ``trajectory``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sumi.diffusion import alpha_from_log_snr, uniform
from sumi.errors import InputError
from sumi.model import takes_sampler_keywords
from sumi.sampling.canvas import parse_prompts, plan_canvas
from sumi.sampling.config import SamplingConfig
from sumi.sampling.fewstep import psi_step, threshold_step
from sumi.sampling.posterior import log_normalizer
from sumi.sampling.schedule import step_log_snrs
from sumi.sampling.steps import adaptive_step, ancestral_step, greedy_step

logger = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """What one step did; valid during the callback (tensors are [B, C] on the model's device, do not modify).

    ``argmax`` / ``argmax_prob`` are computed on first access, so callbacks that do not read them cost nothing.
    """

    step: int
    """0-based step index."""
    num_steps: int
    log_snr_t: float
    """λ of the level the step started from (noisier)."""
    log_snr_s: float
    """λ of the level it moved to (cleaner)."""
    canvas: torch.Tensor
    """The canvas after the step (int64)."""
    committed: torch.Tensor
    """Positions the sampler wrote this step (bool; adaptive: the chosen ones, else every resampled one)."""
    changed: torch.Tensor
    """Positions whose token differs from before the step (bool)."""
    nfe: int
    """Forward calls so far."""
    reused_logits: bool
    """True when no row needed a new forward pass for this step."""
    prompt_lengths: list[int] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    """New-token budget per row (the anchor, if any, follows it)."""
    source: LogitSource | None = field(default=None, repr=False)
    _argmax: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def logits(self) -> torch.Tensor:
        """fp32 logits [B, C, V] of the canvas before the step (computed on first access if the sampler
        did not need them all)."""
        with torch.inference_mode():
            return self.source.full()

    def _top(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._argmax is None:
            with torch.inference_mode():
                self._argmax = self._compute_top()
        return self._argmax

    def _compute_top(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.source.full()
        top_logit, ids = logits.max(-1)
        prob = torch.exp(top_logit - log_normalizer(logits.reshape(-1, logits.shape[-1])).view(ids.shape))
        return ids, prob

    @property
    def argmax(self) -> torch.Tensor:
        """argmax_v of the logits at each position (int64)."""
        return self._top()[0]

    @property
    def argmax_prob(self) -> torch.Tensor:
        """Its untempered softmax probability (fp32)."""
        return self._top()[1]


@dataclass
class TrajectoryFrame:
    """One recorded step (CPU tensors, [B, C]); step −1 is the starting canvas."""

    step: int
    log_snr_t: float
    log_snr_s: float
    canvas: torch.Tensor
    committed: torch.Tensor
    argmax_prob: torch.Tensor | None


@dataclass
class Trajectory:
    """Every canvas a run visited: frames[0] is the start, frames[k + 1] the canvas after step k."""

    frames: list[TrajectoryFrame] = field(default_factory=list)
    frozen_mask: torch.Tensor | None = None
    prompt_lengths: list[int] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)


@dataclass
class GenerationOutput:
    """Result of :func:`generate`."""

    sequences: list[list[int]]
    """New tokens per row: canvas[P : P + budget], cut before the first EOS when ``trim_at_eos``."""
    canvas: torch.Tensor
    """The full final canvas [B, C] (prompt, generation, anchors, tail)."""
    prompt_lengths: list[int]
    steps_run: int
    """Steps executed (fewer than requested after an early stop)."""
    nfe: int
    """Forward calls actually made (cached steps cost none)."""
    budgets: list[int] = field(default_factory=list)
    """New-token budget per row (the anchor sits right after it)."""
    trajectory: Trajectory | None = None
    frozen_mask: torch.Tensor | None = None
    """[B, C] positions that were held fixed (prompt, anchor, ``frozen``, after ``denoise_end``)."""
    initial_canvas: torch.Tensor | None = None
    """[B, C] the canvas before the first step (prompt, anchors and frozen tokens written over the random draw):
    what a returned token still equal to it may be left over from."""


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def forward_logits(model: torch.nn.Module, canvas: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """fp32 logits [B, C, V] of a full canvas (no padding mask: every canvas position is a real token)."""
    out = model(canvas, validate=False) if takes_sampler_keywords(model) else model(canvas)
    logits = getattr(out, "logits", out)
    return logits[..., :vocab_size].float()  # a training run may pad the vocabulary


class LogitSource:
    """The model's logits for the current canvas, computed only where and when a sampler asks for them.

    * **Lazy forward**: :meth:`update` only records which rows changed; the forward runs on the first request,
      so a step that needs no logits (e.g. an ancestral step where every position keeps its token) costs none.
    * **Per-row reuse**: only rows whose canvas changed since their last forward are recomputed (valid because
      the model does not see λ).
    * **Split head**: a model whose forward takes the sampler keywords of
      :meth:`sumi.model.SumiForMaskGeneration.forward` (itself, or a wrapper passing keywords through: DDP,
      ``torch.compile``, PEFT) runs its trunk on the changed rows (``return_last_hidden_state``) and its head
      only on the positions requested through :meth:`at` (``last_hidden_state`` + ``logits_at``, ~40% of a
      forward at vocab 32k saved); any other model runs its full forward.
    ``nfe`` counts forward calls of the trunk actually made.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int) -> None:
        self.model, self.vocab_size = model, vocab_size
        self.split = takes_sampler_keywords(model)
        self.canvas: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.nfe = 0

    def update(self, canvas: torch.Tensor, changed_rows: torch.Tensor | None = None) -> None:
        """The canvas is now ``canvas``; ``changed_rows`` [B] bool marks rows that differ (None = all)."""
        self.canvas = canvas
        if changed_rows is None:
            changed_rows = torch.ones(canvas.shape[0], dtype=torch.bool, device=canvas.device)
        self.pending = changed_rows if self.pending is None else self.pending | changed_rows

    def _head(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C, V] from hidden states [B, C, D], or [n, V] at the True positions of ``mask``."""
        out = self.model(None, last_hidden_state=hidden, logits_at=mask, validate=False)
        return out.logits[..., : self.vocab_size].float()

    def _forward(self, ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(hidden [b, C, D], None) from the trunk alone when the model splits, else (None, logits [b, C, V])."""
        if self.split:
            nothing = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
            try:
                out = self.model(ids, logits_at=nothing, return_last_hidden_state=True, validate=False)
            except TypeError as exc:  # a wrapper passing **kwargs to a model without these keywords
                if "unexpected keyword" not in str(exc):
                    raise
                out = None
            hidden = getattr(out, "last_hidden_state", None)
            if hidden is not None:
                return hidden, None
            self.split = False  # the keywords were not honoured: full forwards from now on
            logits = getattr(out, "logits", out)
            if isinstance(logits, torch.Tensor) and logits.dim() == 3:  # it ran the full forward anyway
                return None, logits[..., : self.vocab_size].float()
        return None, forward_logits(self.model, ids, self.vocab_size)

    def _ensure(self) -> None:
        if self.pending is None or not bool(self.pending.any()):
            return
        everything = (self.hidden is None and self.logits is None) or bool(self.pending.all())
        rows = None if everything else self.pending.nonzero().squeeze(-1)
        ids = self.canvas if rows is None else self.canvas[rows]
        hidden, logits = self._forward(ids)
        if hidden is not None:
            if rows is None:
                self.hidden, self.logits = hidden, None
            else:
                self.hidden[rows] = hidden
                if self.logits is not None:
                    self.logits[rows] = self._head(hidden)
        elif rows is None:
            self.logits = logits
        else:
            if self.logits is None:  # switched from split to full forwards: materialise the cached rows first
                self.logits = self._head(self.hidden)
            self.logits[rows] = logits
        self.nfe += 1
        self.pending = torch.zeros_like(self.pending)

    def full(self) -> torch.Tensor:
        """Logits of every position, [B, C, V] fp32."""
        self._ensure()
        if self.logits is None:
            self.logits = self._head(self.hidden)
        return self.logits

    def at(self, mask: torch.Tensor) -> torch.Tensor:
        """Logits of the positions where ``mask`` [B, C] is True, [n, V] fp32 (row-major order)."""
        if not bool(mask.any()):
            return torch.empty(0, self.vocab_size, device=mask.device)
        self._ensure()
        everything = bool(mask.all())
        if self.logits is not None:  # boolean indexing copies: skip it when every position is asked for
            return self.logits.reshape(-1, self.vocab_size) if everything else self.logits[mask]
        if everything:
            return self._head(self.hidden).reshape(-1, self.vocab_size)
        return self._head(self.hidden, mask)


def make_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator`` if given, else one seeded with ``seed``, else one seeded from torch's global RNG."""
    if generator is not None:
        if seed is not None:
            raise InputError("pass either seed or generator, not both")
        return generator
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return gen


def trim(canvas: torch.Tensor, prompt_lengths: list[int], budgets: list[int], eos_id: int,
         trim_at_eos: bool) -> list[list[int]]:
    """New tokens per row, cut before the first EOS at/after the prompt when ``trim_at_eos``."""
    rows = []
    for row, p, budget in zip(canvas.tolist(), prompt_lengths, budgets):
        new = row[p:p + budget]
        if trim_at_eos and eos_id in new:
            new = new[: new.index(eos_id)]
        rows.append(new)
    return rows


@torch.inference_mode()
def denoise(
    model: torch.nn.Module,
    input_ids: torch.Tensor | list[list[int]] | None,
    options: SamplingConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    initial_canvas: torch.Tensor | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
    show_progress: bool = False,
    return_trajectory: bool = False,
) -> GenerationOutput:
    """The fixed-canvas loop behind :func:`sumi.sampling.generate` (which documents the arguments): plan the
    canvas, then run ``options.steps`` sampler steps on it. ``options.sliding`` is not handled here."""
    model_config = model.config
    steps = options.steps
    device = model_device(model)
    vocab_size = model_config.vocab_size
    prompts = parse_prompts(input_ids, attention_mask)
    gen = make_generator(options.seed, generator, device)
    plan = plan_canvas(
        prompts, vocab_size=vocab_size, max_positions=model_config.max_position_embeddings,
        bos_id=model_config.bos_token_id, eos_id=model_config.eos_token_id, max_new_tokens=options.max_new_tokens,
        canvas_length=options.canvas_length, anchor_eosbos=options.anchor_eosbos, frozen=options.frozen,
        denoise_end=options.denoise_end, initial_canvas=initial_canvas, min_log_snr=options.min_log_snr,
        device=device, generator=gen, tail=options.tail, fit_canvas=options.fit_canvas,
        shorten_to_fit=options.shorten_to_fit,
    )
    canvas, free = plan.canvas, plan.free_mask
    log_snrs = step_log_snrs(steps, options.schedule, options.min_log_snr, options.max_log_snr).tolist()
    trajectory = None
    if return_trajectory:
        trajectory = Trajectory(frozen_mask=plan.frozen_mask.cpu(), prompt_lengths=plan.prompt_lengths,
                                budgets=plan.budgets)
        trajectory.frames.append(TrajectoryFrame(-1, log_snrs[0], log_snrs[0], canvas.cpu(),
                                                 torch.zeros_like(free, device="cpu"), None))
    observe = callback is not None or trajectory is not None

    progress = None
    if show_progress:
        from tqdm.auto import tqdm  # optional dependency of the progress bar only

        progress = tqdm(total=steps, desc=f"{options.sampler} sampling", unit="step")
    step, commits = _sampler_step(options, vocab_size=vocab_size, generator=gen)
    source = LogitSource(model, vocab_size)
    if options.guidance_scale != 1:  # γ = 1 is plain sampling: no second source, no extra forward
        from sumi.sampling.guidance import GuidedLogitSource

        prompt_mask = torch.arange(canvas.shape[1], device=device)[None] < torch.tensor(
            plan.prompt_lengths, device=device)[:, None]
        source = GuidedLogitSource(source, LogitSource(model, vocab_size), prompt_mask,
                                   model_config.pad_token_id, options.guidance_scale)
    source.update(canvas)
    initial = canvas.clone()
    steps_run = 0
    for k in range(steps):
        log_snr_t, log_snr_s = log_snrs[k], log_snrs[k + 1]
        nfe_before = source.nfe
        last = k == steps - 1
        if last and options.greedy_tail:
            new, committed = greedy_step(source.full(), canvas, free)
        else:
            new, committed = step(source, canvas, free, log_snr_t, log_snr_s, last)
        changed = new != canvas
        stale = changed.any(dim=1)
        reused = source.nfe == nfe_before
        steps_run += 1
        stop = False
        if observe:
            info = StepInfo(k, steps, log_snr_t, log_snr_s, new, committed, changed, source.nfe, reused,
                            plan.prompt_lengths, plan.budgets, source=source)
            if trajectory is not None:
                trajectory.frames.append(TrajectoryFrame(k, log_snr_t, log_snr_s, new.cpu(), committed.cpu(),
                                                         info.argmax_prob.cpu()))
            if callback is not None:
                stop = bool(callback(info))
        canvas = new
        source.update(canvas, stale)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(nfe=source.nfe)
        if stop:
            logger.debug("callback stopped sampling after step %d", k)
            break
        if options.early_stop and options.deterministic and not bool(stale.any()):
            logger.debug("canvas converged after %d of %d steps", k + 1, steps)
            break
        if commits.finished:
            logger.debug("every free position committed after %d of %d steps", k + 1, steps)
            break
    if progress is not None:
        progress.close()
    sequences = trim(canvas, plan.prompt_lengths, plan.budgets, model_config.eos_token_id, options.trim_at_eos)
    return GenerationOutput(sequences=sequences, canvas=canvas, prompt_lengths=plan.prompt_lengths,
                            steps_run=steps_run, nfe=source.nfe, budgets=plan.budgets, trajectory=trajectory,
                            frozen_mask=plan.frozen_mask, initial_canvas=initial)


@dataclass
class CommitState:
    """What a commit-once sampler (``threshold``) remembers between steps."""

    done: torch.Tensor | None = None
    """[B, C] bool: positions committed so far."""
    finished: bool = False
    """Every free position is committed: the remaining steps would change nothing."""


def _sampler_step(options: SamplingConfig, *, vocab_size: int, generator: torch.Generator):
    """``(step, state)``: ``step(source, canvas, free, λ_t, λ_s, last) -> (new canvas, committed)`` for the chosen
    sampler, and the :class:`CommitState` it updates."""
    commits = CommitState()
    mixing = uniform(vocab_size)
    sampler, temperature, top_k, top_p = options.sampler, options.temperature, options.top_k, options.top_p

    def alpha(log_snr: float) -> float:
        return float(alpha_from_log_snr(torch.tensor(log_snr, dtype=torch.float64), options.min_log_snr,
                                        options.max_log_snr))

    def step(source: LogitSource, canvas: torch.Tensor, free: torch.Tensor, log_snr_t: float, log_snr_s: float,
             last: bool):
        if sampler == "ancestral":
            return ancestral_step(source.at, canvas, free, alpha_t=alpha(log_snr_t), alpha_s=alpha(log_snr_s),
                                  log_snr_t=log_snr_t, mixing=mixing, temperature=temperature, top_k=top_k,
                                  top_p=top_p, generator=generator)
        if sampler == "psi":
            return psi_step(source.at, canvas, free, alpha_t=alpha(log_snr_t), alpha_s=alpha(log_snr_s),
                            log_snr_t=log_snr_t, kappa=options.psi_kappa, mixing=mixing, temperature=temperature,
                            top_k=top_k, top_p=top_p, generator=generator)
        if sampler == "adaptive":
            return adaptive_step(source.full(), canvas, free, tokens_per_step=options.tokens_per_step,
                                 temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if sampler == "threshold":
            done = commits.done if commits.done is not None else torch.zeros_like(free)
            new, committed = threshold_step(
                source.full(), canvas, free, done, threshold=options.threshold,
                tokens_per_step=options.tokens_per_step, last=last, temperature=temperature, top_k=top_k,
                top_p=top_p, generator=generator)
            commits.done = done | committed
            commits.finished = bool((commits.done | ~free).all())
            return new, committed
        return greedy_step(source.full(), canvas, free)

    return step, commits
