"""The fast path of Sumi's loss for pure uniform noise: a hand-written backward, same values, fewer V-sized tensors.

:func:`sumi.diffusion.loss.sumi_loss_reference` builds ``log p_λ`` [N,V] through ``log_softmax`` →
``logaddexp`` → ``clamp`` and lets autograd keep every intermediate; each is a V-sized fp32 tensor
(131 MB per 1k tokens at V = 32k).
For uniform noise, everything the loss needs from the V axis is four numbers per token
(``docs/design.md`` §2.5, notation of :mod:`sumi.diffusion.loss`; c = β/V, p(v) = α·x̂(v) + c):

    S = Σ_v log p(v),   log p(x),   log p(z),   lse = logsumexp(ℓ)

and their gradients have closed forms. With r(v) = α·x̂(v) / p(v) = σ(log α + ℓ_v − lse − log c):

    ∂S/∂ℓ = r − x̂·Σ_v r,   ∂ log p(y)/∂ℓ = r(y)·(e_y − x̂),   ∂ lse/∂ℓ = x̂

:class:`UniformLogTerms` computes the four terms in forward and rebuilds x̂ and r in backward, so autograd keeps
only the logits; KL, IS, the weights and the z-loss are then [N]-sized, exactly as in ``gidd_terms``. The
1e-12 floor on log p(v) is applied as in the reference (it binds only when c ≤ 1e-12, i.e. t below ~V·1e-12),
with its zero gradient masked in backward, so the function is exact in every case and free of host syncs.
Tested against the reference in float64 (``tests/test_loss_fused.py``).
"""

from __future__ import annotations

import math

import torch

from sumi.diffusion.schedule import LOG_FLOOR


class UniformLogTerms(torch.autograd.Function):
    """(S, log p(x), log p(z), lse), each [N], from logits [N,V], ids x, z [N], log α and log c [N]."""

    @staticmethod
    def forward(ctx, logits, x, z, log_alpha, log_c):
        lse = torch.logsumexp(logits, dim=-1)
        shift = (log_alpha - lse)[:, None]  # log(α·x̂(v)) = ℓ_v + shift
        log_p = torch.logaddexp(logits + shift, log_c[:, None]).clamp_min_(LOG_FLOOR)
        total = log_p.sum(-1)
        log_p_x = log_p.gather(-1, x[:, None]).squeeze(-1)
        log_p_z = log_p.gather(-1, z[:, None]).squeeze(-1)
        ctx.save_for_backward(logits, x, z, shift, log_c, lse)
        return total, log_p_x, log_p_z, lse

    @staticmethod
    def backward(ctx, g_total, g_x, g_z, g_lse):
        logits, x, z, shift, log_c, lse = ctx.saved_tensors
        x_hat = torch.exp(logits - lse[:, None])
        # a = log(α·x̂), r = σ(a − log c) = α·x̂/p. The 1e-12 floor on log p binds where α·x̂ + c ≤ 1e-12, i.e.
        # a ≤ θ = log(1e-12 − c) (only possible when c < 1e-12, t below ~V·1e-12); there log p has no gradient.
        a = logits + shift
        theta = torch.where(log_c < LOG_FLOOR, LOG_FLOOR + torch.log1p(-torch.exp(log_c - LOG_FLOOR)), -math.inf)
        keep = a > theta[:, None]
        r = torch.sigmoid(a.sub_(log_c[:, None])).mul_(keep)
        r_x = r.gather(-1, x[:, None]).squeeze(-1)
        r_z = r.gather(-1, z[:, None]).squeeze(-1)
        coef = g_lse - g_total * r.sum(-1) - g_x * r_x - g_z * r_z
        grad = r.mul_(g_total[:, None]).add_(x_hat.mul_(coef[:, None]))
        grad.scatter_add_(-1, x[:, None], (g_x * r_x)[:, None])
        grad.scatter_add_(-1, z[:, None], (g_z * r_z)[:, None])
        return grad, None, None, None, None
