"""Per-position distributions of the samplers (``docs/design.md`` §4.3, §4.4).

Notation: z_t the current (noisier) token, λ_t < λ_s the levels of one step, α = σ(λ), α_{t|s} = α_t/α_s,
x̂ [.., V] the model's (tempered / truncated) clean-token distribution, π the mixing distribution.

The exact ancestral posterior is
    p(z_s = v | z_t) = q_s(v)·q_{t|s}(z_t | v) / q_t(z_t),   q_λ = α·x̂ + (1 − α)·π,
    q_{t|s}(z_t | v) = α_{t|s}·1[v = z_t] + n_{t|s}(z_t),   n_{t|s} = (1 − α_t)·π_t − α_{t|s}·(1 − α_s)·π_s.
For uniform noise π is constant in λ, so n_{t|s}(z_t) = (1 − α_{t|s})·π(z_t) does not depend on v and the posterior is a
three-part mixture that needs no V-sized vector:
    p = w_keep·e_{z_t} + (1 − w_keep)·(α_s·x̂ + (1 − α_s)·π),   w_keep = α_{t|s}·q_s(z_t) / q_t(z_t).
:func:`posterior_probs` builds the explicit V-sized posterior (any mixing kind; tests and the reference loop);
:func:`uniform_posterior_weights` gives the three mixture weights (the fast sampler).
"""

from __future__ import annotations

import torch

from sumi.diffusion import LOG_SNR_MAX, LOG_SNR_MIN, MixingDistribution, alpha_from_log_snr

NEG_INF = float("-inf")
CHUNK_ELEMENTS = 1 << 21
"""Row reductions over V run on chunks of ~2M logits (8 MB fp32): a chunk's temporaries stay in cache, whereas
one V-sized temporary for every position (128 MB at B·C = 1024, V = 32k) makes the step memory-bound (3-4x
slower, measured on 2 cores). Results are bitwise identical: every row is reduced on its own."""


def _row_chunks(num_rows: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(1, vocab))
    return ((i, min(i + step, num_rows)) for i in range(0, num_rows, step))


def log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last axis, [n, V] → [n], computed chunk by chunk."""
    out = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for lo, hi in _row_chunks(logits.shape[0], logits.shape[-1]):
        out[lo:hi] = torch.logsumexp(logits[lo:hi], dim=-1)
    return out


def confidence(logits: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max_v x̂(v), x̂(z)) with x̂ = softmax(logits) per row; logits [n, V], z [n] → two [n] tensors."""
    p_max = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
    p_z = torch.empty_like(p_max)
    for lo, hi in _row_chunks(logits.shape[0], logits.shape[-1]):
        probs = torch.softmax(logits[lo:hi], dim=-1)
        p_max[lo:hi] = probs.amax(-1)
        p_z[lo:hi] = probs.gather(-1, z[lo:hi, None]).squeeze(-1)
    return p_max, p_z


def truncate_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """ℓ/T with tokens outside top-k / top-p set to −inf (HF ``_probs_with_topk_topp``; §4.4). T > 0.

    top-k keeps every token tied with the k-th largest value; top-p removes tokens whose cumulative
    probability (sorted descending) exceeds p, shifted right by one so that the first token is always kept.
    Shapes: logits [..., V] → [..., V] (a new tensor unless nothing changes).
    """
    scaled = logits if temperature == 1.0 else logits / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, NEG_INF)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove_sorted = cumulative > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        scaled = scaled.masked_fill(remove, NEG_INF)
    return scaled


def clean_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                       top_p: float | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """x̂ [..., V]: softmax of :func:`truncate_logits`, or the one-hot argmax when ``temperature == 0``."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(dtype)
    return torch.softmax(truncate_logits(logits, temperature, top_k, top_p).to(dtype), dim=-1)


def posterior_probs(x_hat: torch.Tensor, z_t: torch.Tensor, log_snr_t: torch.Tensor | float,
                    log_snr_s: torch.Tensor | float, mixing: MixingDistribution,
                    min_log_snr: float = LOG_SNR_MIN, max_log_snr: float = LOG_SNR_MAX) -> torch.Tensor:
    """The explicit posterior p(z_s | z_t), shape [..., V] in x̂'s dtype (§4.1; the reference path).

    x_hat [..., V]; z_t [...] int64; λ_t < λ_s scalars (or broadcastable to z_t).
    """
    dtype = x_hat.dtype
    log_snr_t = torch.as_tensor(log_snr_t, dtype=dtype)
    log_snr_s = torch.as_tensor(log_snr_s, dtype=dtype)
    alpha_t = alpha_from_log_snr(log_snr_t, min_log_snr, max_log_snr)[..., None]
    alpha_s = alpha_from_log_snr(log_snr_s, min_log_snr, max_log_snr)[..., None]
    pi_t = mixing.pi_vector(log_snr_t).to(dtype)
    pi_s = mixing.pi_vector(log_snr_s).to(dtype)
    alpha_ts = alpha_t / alpha_s
    noise_ts = (1 - alpha_t) * pi_t - alpha_ts * (1 - alpha_s) * pi_s  # n_{t|s} = β_{t|s}·π_{t|s}, [.., V]
    q_s = alpha_s * x_hat + (1 - alpha_s) * pi_s
    q_t = alpha_t * x_hat + (1 - alpha_t) * pi_t
    z = z_t[..., None]
    q_ts_at_z = alpha_ts * torch.nn.functional.one_hot(z_t, x_hat.shape[-1]).to(dtype) \
        + torch.gather(noise_ts.expand_as(x_hat), -1, z)  # q_{t|s}(z_t | v) for every v
    return q_s * q_ts_at_z / torch.gather(q_t, -1, z)


def uniform_posterior_weights(x_hat_at_z: torch.Tensor, pi_at_z: torch.Tensor | float, alpha_t: float,
                              alpha_s: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture weights (keep z_t, draw from x̂, draw from π) of the uniform-noise posterior; each [...].

    x_hat_at_z = x̂(z_t) and pi_at_z = π(z_t) per position. Computed in float64: w_keep is a ratio of nearly
    equal numbers late in sampling, where float32 would bias the keep probability.
    """
    x = x_hat_at_z.to(torch.float64)
    pi = torch.as_tensor(pi_at_z, dtype=torch.float64, device=x.device)
    q_s = alpha_s * x + (1.0 - alpha_s) * pi
    q_t = alpha_t * x + (1.0 - alpha_t) * pi
    keep = ((alpha_t / alpha_s) * q_s / q_t).clamp(0.0, 1.0)
    move = 1.0 - keep
    return keep, move * alpha_s, move * (1.0 - alpha_s)


def sample_rows(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of softmax(logits), logits [n, V] (−inf allowed) → ids [n] int64.

    Inverse CDF in float64: exact to ~1e-16 per token, and tokens with probability 0 are never drawn.
    """
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    cdf = torch.softmax(logits.to(torch.float64), dim=-1).cumsum_(-1)
    u = torch.rand(logits.shape[0], 1, dtype=torch.float64, device=logits.device, generator=generator)
    ids = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return ids.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws from softmax(logits) for every row at once, [..., V] → [...] (Gumbel-max; many rows)."""
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    tiny = torch.finfo(logits.dtype).tiny
    exponential = (-torch.log(u.clamp_(min=tiny))).clamp_(min=tiny)  # E ~ Exp(1), never 0
    gumbel = -torch.log(exponential)
    return (logits + gumbel).argmax(-1)
