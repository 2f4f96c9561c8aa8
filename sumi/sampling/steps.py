"""One denoising step of each sampler (fast paths). The loop in :mod:`sumi.sampling.loop` owns the canvas.

Shapes: logits [B, C, V] fp32, canvas [B, C] int64, free [B, C] bool (True = may change). Each step returns the
new canvas and the positions it wrote (``committed``, [B, C] bool). Randomness comes only from ``generator``,
consumed in a fixed order, so a seed reproduces a run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sumi.diffusion import MixingDistribution
from sumi.sampling.posterior import (
    confidence,
    log_normalizer,
    sample_rows,
    truncate_logits,
    uniform_posterior_weights,
)


def ancestral_step(logits_at: Callable[[torch.Tensor], torch.Tensor], canvas: torch.Tensor, free: torch.Tensor,
                   *, alpha_t: float, alpha_s: float, log_snr_t: float, mixing: MixingDistribution,
                   temperature: float, top_k: int | None, top_p: float | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ancestral update z_t → z_s of every free position (docs/design.md §4.3) as a three-part mixture.

    ``logits_at(mask)`` returns the fp32 logits [n, V] of the positions where the [B, C] bool ``mask`` is True
    (row-major order); it is called once, only for the positions that need them. Keep probability
    w_keep = α_{t|s}·q_s(z)/q_t(z) is at least w_min = α_{t|s}(1 − α_s)/(1 − α_t) = e^{λ_t − λ_s} (x̂(z) = 0), so with
    u ~ U[0, 1) drawn first, positions with u < w_min keep z_t whatever the model says: in the middle of a
    64-step linear schedule that is ~94% of them. The others need x̂(z_t) (one logsumexp and one gather), and only the
    few whose component is "draw from x̂" need a full-row draw. No V-sized posterior is ever built.
    """
    return mixture_step(logits_at, canvas, free, keep_floor=(alpha_t / alpha_s) * (1.0 - alpha_s) / (1.0 - alpha_t),
                        weights=lambda x_hat_at_z, pi_at_z: uniform_posterior_weights(x_hat_at_z, pi_at_z, alpha_t,
                                                                                      alpha_s),
                        log_snr_t=log_snr_t, mixing=mixing, temperature=temperature, top_k=top_k, top_p=top_p,
                        generator=generator)


Weights = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def mixture_step(logits_at: Callable[[torch.Tensor], torch.Tensor], canvas: torch.Tensor, free: torch.Tensor, *,
                 keep_floor: float, weights: Weights, log_snr_t: float, mixing: MixingDistribution,
                 temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The update shared by the ancestral and Ψ steps: every free position keeps z, draws from x̂ or draws from π.

    ``weights(x̂(z), π(z))`` gives the three mixture weights (float64, [n] each); ``keep_floor`` is a lower bound
    of the keep weight whatever x̂ says, so positions with u < keep_floor keep z without logits. One u ~ U[0, 1) per
    position is drawn first, in a fixed order, so a seed reproduces a run and equal weights give equal tokens.
    """
    u = torch.rand(canvas.shape, dtype=torch.float64, device=canvas.device, generator=generator)
    need = free & (u >= keep_floor)
    z, u_need = canvas[need], u[need]
    logits = logits_at(need)
    if temperature == 0:
        argmax = logits.argmax(-1)
        x_hat_at_z = (argmax == z).to(torch.float64)  # x̂ is the one-hot argmax (§4.4)
        scaled = None
    else:
        scaled = truncate_logits(logits, temperature, top_k, top_p)
        log_norm = log_normalizer(scaled)
        x_hat_at_z = torch.exp(scaled.gather(-1, z[:, None]).squeeze(-1).double() - log_norm.double())
    pi_at_z = mixing.pi_at(z, torch.tensor(log_snr_t, device=canvas.device))
    keep, from_data, _ = weights(x_hat_at_z, pi_at_z)
    draw_data = (u_need >= keep) & (u_need < keep + from_data)
    draw_uniform = u_need >= keep + from_data
    if temperature == 0:
        z[draw_data] = argmax[draw_data]
    else:
        z[draw_data] = sample_rows(scaled[draw_data], generator)
    count = int(draw_uniform.sum())
    if count:
        z[draw_uniform] = mixing.sample(torch.zeros(count, device=canvas.device), generator=generator)
    new = canvas.clone()
    new[need] = z
    committed = torch.zeros_like(free)
    committed[need] = draw_data | draw_uniform
    return new, committed


def adaptive_step(logits: torch.Tensor, canvas: torch.Tensor, free: torch.Tensor, *, tokens_per_step: int,
                  temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit the ``tokens_per_step`` most confident free positions per row (docs/design.md §4.5).

    Confidence c_i = max_v x̂_i(v) − x̂_i(z_i) with x̂ = softmax(logits) untempered; the chosen positions take the
    argmax of x̂ (T = 0) or a draw from the tempered, truncated softmax. For uniform noise the prior weight π(z_i)
    of the reference is the same for every position, so it does not change the ranking.
    """
    batch, length, vocab = logits.shape
    p_max, p_z = confidence(logits.reshape(-1, vocab), canvas.reshape(-1))
    score = (p_max - p_z).view(batch, length).masked_fill(~free, float("-inf"))
    k = min(tokens_per_step, length)
    top = torch.topk(score, k, dim=-1)
    chosen = top.values > float("-inf")  # rows with fewer free positions than k
    rows = torch.arange(batch, device=canvas.device)[:, None].expand_as(top.indices)
    rows, cols = rows[chosen], top.indices[chosen]
    if temperature == 0:
        tokens = torch.softmax(logits[rows, cols], dim=-1).argmax(-1)  # the argmax of x̂, as the release takes it
    else:
        tokens = sample_rows(truncate_logits(logits[rows, cols], temperature, top_k, top_p), generator)
    new = canvas.clone()
    new[rows, cols] = tokens
    committed = torch.zeros_like(free)
    committed[rows, cols] = True
    return new, committed


def greedy_step(logits: torch.Tensor, canvas: torch.Tensor, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every free position takes its argmax."""
    new = torch.where(free, logits.argmax(-1), canvas)
    return new, free.clone()
