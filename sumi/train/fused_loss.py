"""Sumi's training loss for pure uniform noise with a hand-written backward: same values, fewer V-sized tensors.

:func:`sumi.diffusion.loss.sumi_loss` builds ``log p_λ`` [N,V] through ``log_softmax`` → ``logaddexp`` → ``clamp``
and lets autograd keep every intermediate; each is a V-sized fp32 tensor (131 MB per 1k tokens at V = 32k).
For uniform noise, everything the loss needs from the V axis is four numbers per token
(``sumi-model.md`` §3, notation of :mod:`sumi.diffusion.loss`; c = β/V, p(v) = α·x̂(v) + c):

    S = Σ_v log p(v),   log p(x),   log p(z),   lse = logsumexp(ℓ)

and their gradients have closed forms. With r(v) = α·x̂(v) / p(v) = σ(log α + ℓ_v − lse − log c):

    ∂S/∂ℓ = r − x̂·Σ_v r,   ∂ log p(y)/∂ℓ = r(y)·(e_y − x̂),   ∂ lse/∂ℓ = x̂

:class:`UniformLogTerms` computes the four terms in forward and rebuilds x̂ and r in backward, so autograd keeps
only the logits; KL, IS, the weights and the z-loss are then [N]-sized, exactly as in ``gidd_terms``. The
1e-12 floor on log p(v) is never active when log c > log 1e-12 (c ≥ t_min / V ≈ 1.2e-4 / V); the function falls
back to the reference loss otherwise, so it is exact in every case. Tested against ``sumi_loss`` in float64.
"""

from __future__ import annotations

import torch

from sumi.diffusion.loss import IGNORE_INDEX, LOG_FLOOR, _broadcast_time, _xlogx, loss_weights, sumi_loss
from sumi.diffusion.mixing import uniform
from sumi.diffusion.schedule import alpha_from_time, log_snr_from_alpha


class UniformLogTerms(torch.autograd.Function):
    """(S, log p(x), log p(z), lse), each [N], from logits [N,V], ids x, z [N], log α and log c [N]."""

    @staticmethod
    def forward(ctx, logits, x, z, log_alpha, log_c):
        lse = torch.logsumexp(logits, dim=-1)
        shift = (log_alpha - lse)[:, None]  # log(α·x̂(v)) = ℓ_v + shift
        log_p = torch.logaddexp(logits + shift, log_c[:, None])
        total = log_p.sum(-1)
        log_p_x = log_p.gather(-1, x[:, None]).squeeze(-1)
        log_p_z = log_p.gather(-1, z[:, None]).squeeze(-1)
        ctx.save_for_backward(logits, x, z, shift, log_c, lse)
        return total, log_p_x, log_p_z, lse

    @staticmethod
    def backward(ctx, g_total, g_x, g_z, g_lse):
        logits, x, z, shift, log_c, lse = ctx.saved_tensors
        x_hat = torch.exp(logits - lse[:, None])
        r = torch.sigmoid(logits + (shift - log_c[:, None]))
        r_x = r.gather(-1, x[:, None]).squeeze(-1)
        r_z = r.gather(-1, z[:, None]).squeeze(-1)
        coef = g_lse - g_total * r.sum(-1) - g_x * r_x - g_z * r_z
        grad = r.mul_(g_total[:, None]).add_(x_hat.mul_(coef[:, None]))
        grad.scatter_add_(-1, x[:, None], (g_x * r_x)[:, None])
        grad.scatter_add_(-1, z[:, None], (g_z * r_z)[:, None])
        return grad, None, None, None, None


def fused_sumi_loss(logits: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | float, *,
                    beta_is: float = 1.0, z_loss: float = 1e-5,
                    vocab_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Drop-in for :func:`sumi.diffusion.loss.sumi_loss` (same arguments, values and metrics)."""
    v_size = vocab_size or logits.shape[-1]
    logits = logits[..., :v_size]
    logits = logits if logits.dtype == torch.float64 else logits.float()  # fp64 kept for exactness tests
    valid = labels != IGNORE_INDEX
    x = torch.where(valid, labels, 0)
    alpha = alpha_from_time(_broadcast_time(t, z.shape, logits.device)).to(logits.dtype)
    c = (1 - alpha) / v_size
    log_c = torch.log(c)
    if bool((log_c <= LOG_FLOOR).any()):  # the floor would bind: use the reference (never at Sumi's λ range)
        return sumi_loss(logits, z, labels, t, beta_is=beta_is, z_loss=z_loss, vocab_size=v_size)
    n = z.numel()
    total, log_p_x, log_p_z, lse = UniformLogTerms.apply(
        logits.reshape(n, v_size), x.reshape(n), z.reshape(n), torch.log(alpha).reshape(n), log_c.reshape(n))
    total, log_p_x, log_p_z, lse = (v.view(z.shape) for v in (total, log_p_x, log_p_z, lse))

    q_x = alpha + c
    neg_entropy = _xlogx(q_x) + (v_size - 1) * _xlogx(c)
    cross = alpha * log_p_x + c * total
    kl = (neg_entropy - cross).clamp_min(0)
    q_z = torch.where(z == x, q_x, c)
    log_r = torch.log(q_z.clamp_min(1e-12)) - log_p_z
    itakura_saito = torch.exp(log_r) - log_r - 1
    w, w_elbo = loss_weights(z, x, alpha, log_snr_from_alpha(alpha), uniform(v_size))

    lse_sq = lse.pow(2)
    loss_tok = w * (kl + beta_is * itakura_saito) + z_loss * lse_sq
    weight = valid.to(loss_tok.dtype)
    count = weight.sum().clamp_min(1)
    loss = (loss_tok * weight).sum() / count

    def mean(v: torch.Tensor) -> torch.Tensor:
        return ((v * weight).sum() / count).detach()

    metrics = {
        "elbo": mean(w_elbo * (kl + itakura_saito)),
        "kl": mean(w * kl),
        "is": mean(w * itakura_saito),
        "z_loss": mean(lse_sq),
        "tokens": weight.sum().detach(),
    }
    return loss, metrics
