"""Step schedules of the released sampler (``shared/spec/sumi-model.md`` §4, ``gidd-math.md`` §4.2).

A schedule is the ascending list of log-SNRs λ_0 < λ_1 < … < λ_K visited by K denoising steps: step k moves the
canvas from the noisier level t = λ_k to the cleaner level s = λ_{k+1}. The signal level α runs from
``ALPHA_LO`` to 1 − ``ALPHA_LO`` and is mapped to λ = logit(α), clamped to [λ_min, λ_max] with
:func:`sumi.diffusion.log_snr_from_alpha`.
"""

from __future__ import annotations

import math

import torch

from sumi.diffusion import LOG_SNR_MAX, LOG_SNR_MIN, log_snr_from_alpha

SCHEDULES = ("linear", "cosine")
ALPHA_LO = 1e-4
"""Lowest α of a schedule (the release's ``linspace(1e-4, 1 - 1e-4, steps + 1)``)."""


def step_log_snrs(num_steps: int, schedule: str = "linear", min_log_snr: float = LOG_SNR_MIN,
                  max_log_snr: float = LOG_SNR_MAX) -> torch.Tensor:
    """λ_0..λ_K, shape [num_steps + 1], float64, ascending (noisy → clean).

    ``linear``: α = linspace(1e-4, 1 − 1e-4, K + 1) (the release). ``cosine``: α = 1e-4 + (1 − 2e-4)·f(u) with
    f(u) = 0.5 − 0.5·cos(πu), u = linspace(0, 1, K + 1), i.e. the release's ``0.5 + 0.5·cos(πt)`` with
    t = 1 − u, squeezed into the same α range so both schedules share their endpoints.
    """
    progress = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if schedule == "linear":
        shape = progress
    elif schedule == "cosine":
        shape = 0.5 - 0.5 * torch.cos(math.pi * progress)
    else:  # validated by the caller; kept for direct use
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    alpha = ALPHA_LO + (1.0 - 2.0 * ALPHA_LO) * shape
    return log_snr_from_alpha(alpha, min_log_snr, max_log_snr)
