"""Sampling from Sumi models: the released samplers (adaptive, ancestral, greedy), made fast and observable.

* :class:`SamplingConfig` — every option of a sampler call, typed and validated;
* :func:`generate` / :func:`generate_text` — ids or texts in, continuations out (``docs/design.md`` §4);
* :func:`generate_long` — outputs longer than one canvas, by sliding it;
* :func:`self_correct` — GIDD-style refinement of a finished canvas (``docs/design.md`` §4.6);
* :mod:`sumi.sampling.posterior` — the posterior as a three-part mixture, and its explicit V-sized form;
* :mod:`sumi.sampling.reference` — a straightforward loop the fast paths are tested and benchmarked against.
"""

from sumi.sampling.canvas import CanvasPlan, plan_canvas
from sumi.sampling.config import SAMPLERS, SamplingConfig
from sumi.sampling.generate import (
    GenerationOutput,
    StepInfo,
    Trajectory,
    TrajectoryFrame,
    cut_at_stop,
    generate,
    generate_text,
)
from sumi.sampling.long import generate_long
from sumi.sampling.posterior import posterior_probs, uniform_posterior_weights
from sumi.sampling.schedule import SCHEDULES, step_log_snrs
from sumi.sampling.self_correct import SelfCorrectionStats, self_correct

__all__ = [
    "SAMPLERS", "SCHEDULES", "CanvasPlan", "GenerationOutput", "SamplingConfig", "StepInfo", "Trajectory",
    "TrajectoryFrame",
    "cut_at_stop", "generate", "generate_long", "generate_text", "plan_canvas", "posterior_probs",
    "SelfCorrectionStats", "self_correct", "step_log_snrs", "uniform_posterior_weights",
]
