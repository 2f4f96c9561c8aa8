"""Step schedules of the released sampler (``docs/design.md`` §4.2).

A schedule is the ascending list of log-SNRs λ_0 < λ_1 < … < λ_K visited by K denoising steps: step k moves the
canvas from the noisier level λ_k to the cleaner level λ_{k+1}. Each schedule gives a signal level α per level,
mapped to λ = logit(α) and clamped to [λ_min, λ_max] with :func:`sumi.diffusion.log_snr_from_alpha`.
"""

from __future__ import annotations

import math

import torch

from sumi.diffusion import LOG_SNR_MAX, LOG_SNR_MIN, log_snr_from_alpha

SCHEDULES = ("linear", "cosine")
ALPHA_LO = 1e-4
"""Lowest α of the linear schedule (the release's ``linspace(1e-4, 1 - 1e-4, steps + 1)``)."""
COSINE_TIME_ENDS = (0.999, 1e-3)
"""The cosine schedule's time grid runs from 0.999 down to 0.001 (the release's ``linspace(0.999, 1e-3, K + 1)``)."""


def step_log_snrs(num_steps: int, schedule: str = "linear", min_log_snr: float = LOG_SNR_MIN,
                  max_log_snr: float = LOG_SNR_MAX) -> torch.Tensor:
    """λ_0..λ_K, shape [num_steps + 1], float64, ascending (noisy → clean).

    Both are the release's: ``linear``: α = linspace(1e-4, 1 − 1e-4, K + 1); ``cosine``: τ = linspace(0.999,
    0.001, K + 1), α = 0.5 + 0.5·cos(π·τ) (its end levels saturate at λ_min / λ_max, so those steps do nothing).
    """
    if schedule == "linear":
        alpha = torch.linspace(ALPHA_LO, 1.0 - ALPHA_LO, num_steps + 1, dtype=torch.float64)
    elif schedule == "cosine":
        time = torch.linspace(*COSINE_TIME_ENDS, num_steps + 1, dtype=torch.float64)
        alpha = 0.5 + 0.5 * torch.cos(math.pi * time)
    else:  # validated by SamplingConfig; kept for direct use
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    return log_snr_from_alpha(alpha, min_log_snr, max_log_snr)
