"""Noise levels in log-SNR form (``docs/design.md`` §2.1, §2.2).

Notation (used across ``sumi.diffusion``):
    λ      log-SNR, ``log_snr``; clipped to [λ_min, λ_max] = [−9, 9] wherever α is formed
    α      signal level σ(λ) (``alpha``); β = 1 − α
    t      diffusion time, α = 1 − t (Sumi's released loss takes t)
    p(λ)   density the training λ was drawn from: σ(λ)(1 − σ(λ)) for t ~ U (the ELBO's 1/p(λ) weight)
Shapes: every function is elementwise and broadcasts; tensors are fp32 unless stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sumi.errors import ConfigError

LOG_SNR_MIN = -9.0
LOG_SNR_MAX = 9.0
ALPHA_EPS = 1e-12
"""α is clamped to [ALPHA_EPS, 1 − ALPHA_EPS] where it is derived from t (docs/design.md §2.5)."""
PROB_FLOOR = 1e-12
"""Probabilities inside Sumi's loss are floored here before a log (the release's convention)."""
LOG_FLOOR = math.log(PROB_FLOOR)
"""log(PROB_FLOOR): the one home of the floor the uniform loss (``loss.py``, ``fused.py``) applies to log p."""


def alpha_from_log_snr(log_snr: torch.Tensor, lo: float = LOG_SNR_MIN, hi: float = LOG_SNR_MAX) -> torch.Tensor:
    """α(λ) = σ(clip(λ, lo, hi))."""
    return torch.sigmoid(log_snr.clamp(lo, hi))


def log_snr_from_alpha(alpha: torch.Tensor, lo: float = LOG_SNR_MIN, hi: float = LOG_SNR_MAX) -> torch.Tensor:
    """λ = clip(log α − log(1 − α), lo, hi)."""
    alpha = alpha.clamp(ALPHA_EPS, 1 - ALPHA_EPS)
    return (torch.log(alpha) - torch.log1p(-alpha)).clamp(lo, hi)


def alpha_from_time(t: torch.Tensor) -> torch.Tensor:
    """Sumi's parametrisation: α = 1 − t, clamped away from 0 and 1."""
    return (1.0 - t).clamp(ALPHA_EPS, 1 - ALPHA_EPS)


def signal_from_time(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, β) = (1 − t, t), both clamped to [ALPHA_EPS, 1 − ALPHA_EPS], in t's dtype. β is t itself rather than
    1 − α: recomputing it from α loses up to 1e-4 relative precision in fp32 near the smallest t."""
    beta = t.clamp(ALPHA_EPS, 1 - ALPHA_EPS)
    return 1.0 - beta, beta


def log_snr_density(alpha: torch.Tensor) -> torch.Tensor:
    """p(λ) = σ(λ)(1 − σ(λ)) = α(1 − α): the density of λ when α (equivalently t) is drawn uniformly.

    The reference code omits the truncation normaliser (α(λ_max) − α(λ_min) ≈ 0.99975); so do we.
    """
    return alpha * (1.0 - alpha)


def time_range(lo: float = LOG_SNR_MIN, hi: float = LOG_SNR_MAX) -> tuple[float, float]:
    """[t_min, t_max] = [1 − σ(λ_max), 1 − σ(λ_min)]."""
    return 1.0 - torch.sigmoid(torch.tensor(hi, dtype=torch.float64)).item(), \
        1.0 - torch.sigmoid(torch.tensor(lo, dtype=torch.float64)).item()


@dataclass(frozen=True)
class TimeSampler:
    """Training-time draw of t (the "linear" rate: α ~ U[α(λ_min), α(λ_max)]).

    Each sequence independently, with probability ``per_token_fraction``, gets an independent t per token;
    the others share one t across the sequence (Sumi/E used 20% per-token sequences).
    """

    min_log_snr: float = LOG_SNR_MIN
    max_log_snr: float = LOG_SNR_MAX
    per_token_fraction: float = 0.2
    """Fraction of sequences whose tokens get independent t (0 = always per sequence)."""

    def __post_init__(self) -> None:
        if not self.min_log_snr < self.max_log_snr:
            raise ConfigError(f"min_log_snr={self.min_log_snr} must be < max_log_snr={self.max_log_snr}")
        if not 0.0 <= self.per_token_fraction <= 1.0:
            raise ConfigError(f"per_token_fraction={self.per_token_fraction} must lie in [0, 1]")

    def sample(self, batch: int, seq_len: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """t of shape [batch, seq_len] in [t_min, t_max] (fp32)."""
        t_min, t_max = time_range(self.min_log_snr, self.max_log_snr)
        u = torch.rand(batch, seq_len, generator=generator, device=device)
        per_token = torch.rand(batch, 1, generator=generator, device=device) < self.per_token_fraction
        u = torch.where(per_token, u, u[:, :1].expand(-1, seq_len))
        return t_min + (t_max - t_min) * u
