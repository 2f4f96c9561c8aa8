"""Samplers that need fewer forward calls for the same quality: Ψ (predictor–corrector) and confidence threshold.

Notation as in :mod:`sumi.sampling.posterior`: z the current token of a position, λ_t < λ_s the levels of one
step, α = σ(λ), x̂ the model's (tempered / truncated) clean-token distribution, π the uniform mixing distribution.

**Ψ step** (Duo chapter II, "Ψ-samplers", arXiv 2602.21185): a mixture of the ancestral posterior and a
predictor–corrector move,

    p_Ψ = κ·p(z_s | z_t) + (1 − κ)·[α_s·p(x | z_t) + (1 − α_s)·π],

where p(x | z_t) ∝ x̂(x)·q_{t|0}(z_t | x) is the clean-token posterior (the data posterior "targeting
s = 0") and the bracket noises it forward to level s. p(x | z_t) = w₀·e_z + (1 − w₀)·x̂ with
w₀ = α_t·x̂(z)/(α_t·x̂(z) + (1 − α_t)·π(z)), so p_Ψ is again a three-part mixture (keep z, draw
from x̂, draw from π) and the step needs x̂(z) per position and a full row only where it draws
from x̂, like the fast ancestral step. κ = 1 is the ancestral step exactly (same draws, same
tokens); κ = 0 re-predicts and re-noises every position. With the steps' λ held at one level
(a "loop", λ_t = λ_s) the ancestral part keeps every token and only the corrector moves, which
is what lets Ψ keep improving with more steps.

**Threshold step**: every free position not yet committed whose confidence max_v x̂(v) reaches ``threshold`` is
committed this step (at least the ``tokens_per_step`` most confident), taking its argmax (T = 0) or a draw from
the tempered, truncated x̂; a committed position keeps its token. The run stops when every free position is
committed (a fixed point of the rule), so the forward calls adapt to the model's certainty; the last step of the
schedule commits whatever is left, so no initial noise survives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sumi.diffusion import MixingDistribution
from sumi.sampling.posterior import confidence, sample_rows, truncate_logits, uniform_posterior_weights
from sumi.sampling.steps import mixture_step


def psi_weights(x_hat_at_z: torch.Tensor, pi_at_z: torch.Tensor | float, alpha_t: float, alpha_s: float,
                kappa: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture weights (keep z, draw from x̂, draw from π) of the Ψ step, float64, each [...]."""
    keep_a, data_a, unif_a = uniform_posterior_weights(x_hat_at_z, pi_at_z, alpha_t, alpha_s)
    x = x_hat_at_z.to(torch.float64)
    pi = torch.as_tensor(pi_at_z, dtype=torch.float64, device=x.device)
    signal = alpha_t * x
    w0 = torch.where(signal > 0, signal / (signal + (1.0 - alpha_t) * pi), torch.zeros_like(signal))
    keep = kappa * keep_a + (1.0 - kappa) * alpha_s * w0
    data = kappa * data_a + (1.0 - kappa) * alpha_s * (1.0 - w0)
    return keep, data, kappa * unif_a + (1.0 - kappa) * (1.0 - alpha_s)


def psi_step(logits_at: Callable[[torch.Tensor], torch.Tensor], canvas: torch.Tensor, free: torch.Tensor, *,
             alpha_t: float, alpha_s: float, log_snr_t: float, kappa: float, mixing: MixingDistribution,
             temperature: float, top_k: int | None, top_p: float | None,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Ψ update of every free position (see the module docstring); shapes as in ``ancestral_step``.

    u ~ U[0, 1) per position first; the keep weight is at least κ·e^{λ_t − λ_s} whatever x̂ says, so positions
    below that floor keep z without logits. With κ = 1 the random draws and the result equal ``ancestral_step``'s.
    """
    return mixture_step(logits_at, canvas, free,
                        keep_floor=kappa * (alpha_t / alpha_s) * (1.0 - alpha_s) / (1.0 - alpha_t),
                        weights=lambda x_hat_at_z, pi_at_z: psi_weights(x_hat_at_z, pi_at_z, alpha_t, alpha_s, kappa),
                        log_snr_t=log_snr_t, mixing=mixing, temperature=temperature, top_k=top_k, top_p=top_p,
                        generator=generator)


def threshold_step(logits: torch.Tensor, canvas: torch.Tensor, free: torch.Tensor, done: torch.Tensor, *,
                   threshold: float, tokens_per_step: int, last: bool, temperature: float, top_k: int | None,
                   top_p: float | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit the confident, not yet committed free positions (see the module docstring).

    logits [B, C, V]; ``done`` [B, C] bool marks positions committed earlier (not modified here). ``last``
    commits every remaining position. Returns (new canvas, committed this step).
    """
    batch, length, vocab = logits.shape
    open_ = free & ~done
    p_max, _ = confidence(logits.reshape(-1, vocab), canvas.reshape(-1))
    p_max = p_max.view(batch, length)
    chosen = open_ & (p_max >= threshold) if not last else open_.clone()
    k = min(tokens_per_step, length)
    ranked = p_max.masked_fill(~open_, float("-inf"))
    top = torch.topk(ranked, k, dim=-1)
    rows = torch.arange(batch, device=canvas.device)[:, None].expand_as(top.indices)
    valid = top.values > float("-inf")
    chosen[rows[valid], top.indices[valid]] = True
    rows, cols = chosen.nonzero(as_tuple=True)
    if temperature == 0:
        tokens = logits[rows, cols].argmax(-1)
    else:
        tokens = sample_rows(truncate_logits(logits[rows, cols], temperature, top_k, top_p), generator)
    new = canvas.clone()
    new[rows, cols] = tokens
    return new, chosen
