"""One denoising step of each sampler (fast paths). The loop in :mod:`sumi.sampling.generate` owns the canvas.

Shapes: logits [B, C, V] fp32, canvas [B, C] int64, free [B, C] bool (True = may change). Each step returns the
new canvas and the positions it wrote (``committed``, [B, C] bool). Randomness comes only from ``generator``,
consumed in a fixed order, so a seed reproduces a run.
"""

from __future__ import annotations

import torch

from sumi.diffusion import MixingDistribution
from sumi.sampling.posterior import sample_rows, truncate_logits, uniform_posterior_weights


def ancestral_step(logits: torch.Tensor, canvas: torch.Tensor, free: torch.Tensor, *, alpha_t: float,
                   alpha_s: float, log_snr_t: float, mixing: MixingDistribution, temperature: float,
                   top_k: int | None, top_p: float | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ancestral update z_t → z_s of every free position (gidd-math §4.1) as a three-part mixture.

    Only x̂(z_t) (one logsumexp and one gather per position) and a draw from x̂ at the few positions whose
    mixture component is "draw from x̂" are needed; the V-sized posterior is never built.
    """
    if temperature == 0:
        argmax = logits.argmax(-1)
        x_hat_at_z = (argmax == canvas).to(torch.float64)  # x̂ is the one-hot argmax (§4.4)
        scaled = None
    else:
        scaled = truncate_logits(logits, temperature, top_k, top_p)
        log_norm = torch.logsumexp(scaled, dim=-1)
        x_hat_at_z = torch.exp(scaled.gather(-1, canvas[..., None]).squeeze(-1).double() - log_norm.double())
    pi_at_z = mixing.pi_at(canvas, torch.tensor(log_snr_t, device=canvas.device))
    keep, from_data, _ = uniform_posterior_weights(x_hat_at_z, pi_at_z, alpha_t, alpha_s)
    u = torch.rand(canvas.shape, dtype=torch.float64, device=canvas.device, generator=generator)
    draw_data = free & (u >= keep) & (u < keep + from_data)
    draw_uniform = free & (u >= keep + from_data)
    new = canvas.clone()
    if temperature == 0:
        new[draw_data] = argmax[draw_data]
    else:
        new[draw_data] = sample_rows(scaled[draw_data], generator)
    count = int(draw_uniform.sum())
    if count:
        new[draw_uniform] = mixing.sample(torch.zeros(count, device=canvas.device), generator=generator)
    return new, draw_data | draw_uniform


def adaptive_step(probs: torch.Tensor, logits: torch.Tensor, canvas: torch.Tensor, free: torch.Tensor, *,
                  tokens_per_step: int, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit the ``tokens_per_step`` most confident free positions per row (sumi-model §4, gidd-math §4.5).

    Confidence c_i = max_v x̂_i(v) − x̂_i(z_i) with x̂ = softmax(logits) untempered (``probs`` [B, C, V]); the chosen
    positions take the argmax (T = 0) or a draw from the tempered, truncated softmax. For uniform noise the
    prior weight π(z_i) of the reference is the same for every position, so it does not change the ranking.
    """
    p_max, argmax = probs.max(-1)
    score = (p_max - probs.gather(-1, canvas[..., None]).squeeze(-1)).masked_fill(~free, float("-inf"))
    k = min(tokens_per_step, canvas.shape[1])
    top = torch.topk(score, k, dim=-1)
    chosen = top.values > float("-inf")  # rows with fewer free positions than k
    rows = torch.arange(canvas.shape[0], device=canvas.device)[:, None].expand_as(top.indices)
    rows, cols = rows[chosen], top.indices[chosen]
    if temperature == 0:
        tokens = argmax[rows, cols]
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
