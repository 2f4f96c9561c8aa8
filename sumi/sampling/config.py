"""``SamplingConfig``: every option of one sampler call, typed and validated in one place.

The command line (``sumi generate``), the server, the lm-eval backend, the probes and library callers all build
a :class:`SamplingConfig` and hand it to :func:`sumi.sampling.generate`; none re-declares an option, its
default or its bounds. Per-call objects that are not options (the prompts, a ``torch.Generator``, a starting
canvas, a step callback, a progress bar) stay arguments of ``generate``. Semantics: ``docs/design.md`` §4.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sumi.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN
from sumi.errors import OptionError
from sumi.sampling.schedule import SCHEDULES

SAMPLERS = ("adaptive", "ancestral", "greedy", "psi", "threshold")
TAILS = ("freeze", "denoise")


MAX_STEPS = 1 << 20
"""Upper bound on num_denoising_steps (the schedule is a tensor of K + 1 points; 1e12 steps would not fit)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class SamplingConfig:
    """Options of one :func:`~sumi.sampling.generate` call. Immutable and hashable (the server batches requests
    with equal configs together); derive variants with :meth:`replace`.

    Bad values raise :class:`~sumi.errors.OptionError` (a ``ConfigError`` and an ``InputError``) naming the
    field in ``error.field``; checks that need the model or the prompts (ids in range, the prompt fitting the
    canvas) happen in :func:`~sumi.sampling.canvas.plan_canvas`, still before any forward pass.
    """

    max_new_tokens: int = 128
    """New tokens per row: the generation budget before the EOS, BOS anchor. With ``sliding`` it may exceed
    the canvas."""
    num_denoising_steps: int | None = None
    """K denoising steps, at most one forward pass each (None: ``max_new_tokens``)."""
    sampler: str = "threshold"
    """``adaptive`` (commit the most confident ``tokens_per_step`` positions per step), ``ancestral`` (draw every
    free position from the exact posterior), ``greedy`` (every free position takes its argmax), ``psi`` (the
    Ψ predictor–corrector mixture of ancestral and re-noised clean posterior, weight ``psi_kappa``) or
    ``threshold`` (commit every position whose confidence reaches ``threshold``, once; stop when all are)."""
    schedule: str = "linear"
    """The λ grid of the K steps: ``linear`` or ``cosine`` in α (:mod:`sumi.sampling.schedule`)."""
    min_log_snr: float = LOG_SNR_MIN
    """λ_min: the noisiest level (the starting canvas is the uniform prior drawn there)."""
    max_log_snr: float = LOG_SNR_MAX
    """λ_max: the cleanest level; α is formed from λ clamped to [λ_min, λ_max]."""
    temperature: float = 1.0
    """Temperature T of the clean-token distribution x̂ (0 = the argmax)."""
    top_k: int | None = None
    """Keep only the k most likely ids of x̂ (None = all)."""
    top_p: float | None = None
    """Keep the smallest set of ids whose mass reaches p, in (0, 1] (None = all)."""
    tokens_per_step: int = 4
    """Positions committed per step by ``adaptive`` (at least that many by ``threshold``, so it needs at most
    ⌈max_new_tokens / tokens_per_step⌉ forwards; ignored by the others)."""
    psi_kappa: float = 0.5
    """``psi``: weight κ ∈ [0, 1] of the ancestral posterior in the Ψ mixture (1 = ancestral exactly, 0 = pure
    predictor–corrector)."""
    threshold: float = 0.8
    """``threshold``: confidence max_v x̂(v) ∈ (0, 1] at which a position is committed."""
    greedy_tail: bool = False
    """The last step sets every free position to its argmax (Duo's "greedy tail"), whatever the sampler."""
    tail: str = "freeze"
    """Positions after the anchor (the canvas beyond a row's budget): ``denoise`` them as context (the release)
    or ``freeze`` them at their starting value, so no step is spent on them (only rows shorter than the
    canvas have a tail when ``canvas_length`` is None)."""
    canvas_length: int | None = None
    """Canvas width C, capped at the model's max positions (None: see ``fit_canvas``)."""
    fit_canvas: bool = True
    """With ``canvas_length=None``: make the canvas as wide as the longest row needs (prompt + budget + anchor),
    so no position beyond what was asked for is sampled; False: 2048 (the release's canvas)."""
    anchor_eosbos: bool = True
    """Freeze ``EOS, BOS`` right after each row's budget (where the text should end)."""
    frozen: Any = None
    """Extra fixed tokens: per row a sequence of (position, token) pairs, or a [B, C] tensor with −1 = free."""
    denoise_end: int | tuple[int, ...] | None = None
    """Canvas index (one, or one per row) from which positions keep their starting value."""
    trim_at_eos: bool = True
    """Cut each returned sequence before its first EOS."""
    seed: int | None = None
    """Seed of the canvas draw and of the sampler (None: drawn from torch's global RNG)."""
    early_stop: bool = True
    """Stop a deterministic sampler (greedy, adaptive at T = 0) once a step changes no token."""
    shorten_to_fit: bool = False
    """A ``max_new_tokens`` beyond the canvas is shortened to what fits (the release's ``generate``) instead of
    refused."""
    sliding: bool = False
    """Allow ``max_new_tokens`` beyond one canvas by sliding it (:func:`sumi.sampling.generate_long`)."""
    context_length: int | None = None
    """With ``sliding``: the latest ids each window keeps as its prompt (None: half the canvas)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance γ (:mod:`sumi.sampling.guidance`) for models fine-tuned with prompt dropping:
    x̂ ∝ x̂(·|prompt)^γ · x̂(·)^(1−γ). 1 = no guidance and no extra cost; otherwise one more forward per step."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            self._fail("sampler", f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.schedule not in SCHEDULES:
            self._fail("schedule", f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            self._fail("max_new_tokens", f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        steps = self.num_denoising_steps
        if steps is not None and (not _is_int(steps) or not 1 <= steps <= MAX_STEPS):
            self._fail("num_denoising_steps", f"num_denoising_steps must be an integer >= 1 (or None for "
                                              f"max_new_tokens) and at most {MAX_STEPS}, got {steps!r}")
        if not _is_number(self.temperature) or self.temperature < 0 or math.isinf(self.temperature):
            self._fail("temperature", f"temperature must be a finite number >= 0 (0 = argmax), got "
                                      f"{self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            self._fail("top_k", f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not (_is_number(self.top_p) and 0.0 < self.top_p <= 1.0):
            self._fail("top_p", f"top_p must lie in (0, 1] (or be None), got {self.top_p!r}")
        if not _is_int(self.tokens_per_step) or self.tokens_per_step < 1:
            self._fail("tokens_per_step", f"tokens_per_step must be an integer >= 1, got {self.tokens_per_step!r}")
        for name in ("min_log_snr", "max_log_snr"):
            if not _is_number(getattr(self, name)):
                self._fail(name, f"{name} must be a number, got {getattr(self, name)!r}")
        if not self.min_log_snr < self.max_log_snr:
            self._fail("min_log_snr", f"min_log_snr={self.min_log_snr} must be smaller than "
                                      f"max_log_snr={self.max_log_snr}")
        if self.canvas_length is not None and (not _is_int(self.canvas_length) or self.canvas_length < 2):
            self._fail("canvas_length", f"canvas_length must be an integer >= 2 (or None for 2048), got "
                                        f"{self.canvas_length!r}")
        if not _is_number(self.psi_kappa) or not 0.0 <= self.psi_kappa <= 1.0:
            self._fail("psi_kappa", f"psi_kappa must lie in [0, 1] (1 = ancestral), got {self.psi_kappa!r}")
        if not _is_number(self.threshold) or not 0.0 < self.threshold <= 1.0:
            self._fail("threshold", f"threshold must lie in (0, 1] (a probability), got {self.threshold!r}")
        if self.tail not in TAILS:
            self._fail("tail", f"unknown tail {self.tail!r}; use one of {', '.join(TAILS)}")
        for name in ("anchor_eosbos", "trim_at_eos", "early_stop", "sliding", "greedy_tail", "fit_canvas",
                     "shorten_to_fit"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            self._fail("seed", f"seed must be an integer in [0, 2**63) or None, got {self.seed!r}")
        if self.context_length is not None and (not _is_int(self.context_length) or self.context_length < 1):
            self._fail("context_length", f"context_length must be an integer >= 1, got {self.context_length!r}")
        if not _is_number(self.guidance_scale) or self.guidance_scale < 0 or math.isinf(self.guidance_scale):
            self._fail("guidance_scale", f"guidance_scale must be a finite number >= 0 (1 = no guidance), got "
                                         f"{self.guidance_scale!r}")
        if isinstance(self.denoise_end, list):  # hashable, like every other field
            object.__setattr__(self, "denoise_end", tuple(self.denoise_end))
        if isinstance(self.frozen, list):
            try:
                object.__setattr__(self, "frozen", tuple(tuple(tuple(pair) for pair in row) for row in self.frozen))
            except TypeError:
                self._fail("frozen", f"frozen must hold one list of (position, id) pairs per row, got "
                                     f"{self.frozen!r}")
        if self.sliding:
            used = [name for name in ("frozen", "denoise_end") if getattr(self, name) is not None]
            if used:
                self._fail(used[0], f"{', '.join(used)} cannot be combined with sliding=True (each window has its "
                                    "own canvas)")

    @staticmethod
    def _fail(field: str, message: str) -> None:
        raise OptionError(message, field=field)

    @property
    def steps(self) -> int:
        """K, the number of denoising steps this config runs (per window when sliding)."""
        return self.max_new_tokens if self.num_denoising_steps is None else self.num_denoising_steps

    @property
    def deterministic(self) -> bool:
        """True when the sampler draws no random numbers after the starting canvas."""
        return self.sampler == "greedy" or (self.sampler == "adaptive" and self.temperature == 0)

    def replace(self, **overrides: Any) -> SamplingConfig:
        """A copy with ``overrides`` applied and validated; unknown names raise :class:`OptionError`."""
        unknown = sorted(set(overrides) - set(FIELD_NAMES))
        if unknown:
            raise OptionError(f"unknown sampling option(s) {unknown}; known: {', '.join(FIELD_NAMES)}",
                              field=unknown[0])
        return dataclasses.replace(self, **overrides) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-able values (``frozen`` as nested lists, a tensor as its list form)."""
        out = {f: getattr(self, f) for f in FIELD_NAMES}
        frozen = out["frozen"]
        if frozen is not None:
            out["frozen"] = frozen.tolist() if hasattr(frozen, "tolist") else [[list(p) for p in r] for r in frozen]
        if isinstance(out["denoise_end"], tuple):
            out["denoise_end"] = list(out["denoise_end"])
        return out


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingConfig))
"""Every option name, in declaration order."""

RELEASE = SamplingConfig(canvas_length=None, fit_canvas=False, tail="denoise", sampler="ancestral", temperature=1.0,
                         num_denoising_steps=128, tokens_per_step=1, greedy_tail=False, shorten_to_fit=True)
"""The released sampler's defaults (``docs/design.md`` §4): a 2048-position canvas (capped at the model's positions)
whose tail after the anchor is denoised as context, the ancestral sampler, T = 1, 128 steps, and a
``max_new_tokens`` that does not fit shortened instead of refused. ``--release-defaults`` on the command line and
``model.generate`` (the transformers-facing API, :mod:`sumi.generation`) start from it."""


def sampling_config(config: SamplingConfig | None = None, **overrides: Any) -> SamplingConfig:
    """``config`` (default: all defaults) with ``overrides`` applied: how every entry point builds its config."""
    return (config if config is not None else SamplingConfig()).replace(**overrides)
