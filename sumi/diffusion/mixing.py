"""Mixing distributions π_λ of GIDD (``docs/design.md`` §2.2).

q_λ(z | x) = α·e_x + β·π_λ.  With u uniform over the N non-mask ids and e_m the mask one-hot,
    π_λ = s(λ)·u + (1 − s(λ))·e_m,   s(λ) = σ(a·λ + b),   π'_λ = dπ_λ/dλ = a·s(1 − s)·(u − e_m).
Kinds: ``uniform`` (s ≡ 1; Sumi's, where there is no mask token and N = V), ``mask`` (s ≡ 0) and ``hybrid``
(scale a, shift b; s uses the *unclipped* λ). Every quantity is given per id in closed form, so no V-sized
vector is built except in :meth:`MixingDistribution.pi_vector` (for reference tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sumi.diffusion.schedule import log_snr_from_alpha
from sumi.errors import ConfigError

MixingKind = Literal["uniform", "mask", "hybrid"]


@dataclass(frozen=True)
class MixingDistribution:
    """π_λ over ``vocab_size`` ids, optionally with a mask id (required for ``mask``/``hybrid``)."""

    vocab_size: int
    kind: MixingKind = "uniform"
    mask_id: int | None = None
    scale: float = 1.0
    """a: slope of the hybrid's uniform fraction in λ."""
    shift: float = 0.0
    """b: offset of the hybrid's uniform fraction (b → +∞ is uniform, b → −∞ is mask)."""

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "mask", "hybrid"):
            raise ConfigError(f"unknown noise kind {self.kind!r}; use 'uniform', 'mask' or 'hybrid'")
        if self.kind != "uniform" and self.mask_id is None:
            raise ConfigError(f"noise kind {self.kind!r} needs a mask_id")
        if self.mask_id is not None and not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(f"mask_id={self.mask_id} must lie in [0, vocab_size={self.vocab_size})")

    @property
    def num_uniform(self) -> int:
        """N: how many ids the uniform component covers (all ids except the mask)."""
        return self.vocab_size - (1 if self.mask_id is not None else 0)

    # ---------------------------------------------------------------- s(λ) and its derivative
    def uniform_fraction(self, log_snr: torch.Tensor) -> torch.Tensor:
        """s(λ): the share of the noise that is uniform."""
        if self.kind == "uniform":
            return torch.ones_like(log_snr)
        if self.kind == "mask":
            return torch.zeros_like(log_snr)
        return torch.sigmoid(self.scale * log_snr + self.shift)

    def uniform_fraction_slope(self, log_snr: torch.Tensor) -> torch.Tensor:
        """ds/dλ = a·s(1 − s) (0 for the pure kinds)."""
        if self.kind != "hybrid":
            return torch.zeros_like(log_snr)
        s = self.uniform_fraction(log_snr)
        return self.scale * s * (1 - s)

    # ---------------------------------------------------------------- per-id values
    def is_mask(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mask_id is None:
            return torch.zeros_like(ids, dtype=torch.bool)
        return ids == self.mask_id

    def pi_at(self, ids: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        """π_λ(ids): s/N off the mask, 1 − s at the mask."""
        s = self.uniform_fraction(log_snr)
        return torch.where(self.is_mask(ids), 1 - s, s / self.num_uniform)

    def pi_prime_at(self, ids: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        """π'_λ(ids) = a·s(1−s)·(1/N off the mask, −1 at the mask)."""
        ds = self.uniform_fraction_slope(log_snr)
        return torch.where(self.is_mask(ids), -ds, ds / self.num_uniform)

    def pi_vector(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The explicit π_λ, shape [..., V] (reference path; the fast paths never need it)."""
        s = self.uniform_fraction(log_snr)[..., None]
        ids = torch.arange(self.vocab_size, device=log_snr.device)
        return torch.where(self.is_mask(ids), 1 - s, s / self.num_uniform)

    # ---------------------------------------------------------------- sampling
    def sample(self, log_snr: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ids from π_λ, shape of ``log_snr`` (int64). The uniform draw skips the mask id (§1.4 decision)."""
        r = torch.randint(0, self.num_uniform, log_snr.shape, generator=generator, device=log_snr.device)
        if self.mask_id is not None:
            r = r + (r >= self.mask_id).long()  # map [0, N) onto the non-mask ids
        if self.kind == "uniform":
            return r
        is_uniform = torch.rand(log_snr.shape, generator=generator, device=log_snr.device) \
            < self.uniform_fraction(log_snr)
        return torch.where(is_uniform, r, torch.full_like(r, self.mask_id))

    def sample_zt(self, x: torch.Tensor, alpha: torch.Tensor, log_snr: torch.Tensor | None = None, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q_λ(· | x) = α·e_x + β·π_λ: keep x with probability α, else draw from π_λ.

        x [B,S] int64; alpha broadcastable to x (fp32). ``log_snr`` is only needed for the hybrid kind.
        """
        alpha = torch.as_tensor(alpha, dtype=torch.float32, device=x.device).expand(x.shape)
        if log_snr is None:
            log_snr = log_snr_from_alpha(alpha)
        keep = torch.rand(x.shape, generator=generator, device=x.device) < alpha
        noise = self.sample(log_snr.expand(x.shape), generator=generator)
        return torch.where(keep, x, noise)


def uniform(vocab_size: int) -> MixingDistribution:
    """Sumi's noise: uniform over all ``vocab_size`` ids, no mask token."""
    return MixingDistribution(vocab_size=vocab_size, kind="uniform")
