"""The GIDD loss: KL + Itakura-Saito, its loss and ELBO weights, Sumi's training loss (``docs/design.md`` §2.3).

Per token, with clean id x, noisy id z, logits ℓ [V], α = σ(λ), β = 1 − α and x̂ = softmax(ℓ):
    q_λ(v) = α·1[v = x] + β·π_λ(v)           (data marginal)
    p_λ(v) = α·x̂(v)     + β·π_λ(v)           (model marginal)
    KL     = Σ_v q_λ(v) (log q_λ(v) − log p_λ(v))
    IS     = r − log r − 1,  r = q_λ(z) / p_λ(z)
    w      = (π_λ(z) − π'_λ(z)) / (π_λ(z) + e^λ·1[z = x])        (loss weight)
    w_elbo = w / p(λ),  p(λ) = α(1 − α)                          (ELBO weight; nats/token after integrating)
    L_tok  = w·KL + β_IS·w·IS + ζ·logsumexp(ℓ)²                    (training loss)
    E_tok  = w_elbo·(KL + IS)                                      (NELBO integrand, nats/token)

q_λ takes only three values (at x, at the mask id, elsewhere), so Σ q log q and Σ q log p are closed forms over
one V-sized ``log p_λ`` tensor: no one-hot of x is ever built. All math is in fp32 (or fp64 if the logits are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sumi.config import SumiConfig
from sumi.diffusion.fused import UniformLogTerms
from sumi.diffusion.mixing import MixingDistribution, uniform
from sumi.diffusion.schedule import (
    LOG_FLOOR,
    LOG_SNR_MAX,
    LOG_SNR_MIN,
    PROB_FLOOR,
    alpha_from_log_snr,
    signal_from_time,
)
from sumi.errors import InputError

WEIGHT_DENOM_FLOOR = 1e-8
LOSS_WEIGHT_MAX = 1e3
ELBO_WEIGHT_MAX = 1e6
DENSITY_FLOOR = 1e-12
MASK_LOGIT = -1e6
IGNORE_INDEX = -100


def _xlogx(v: torch.Tensor) -> torch.Tensor:
    """v·log v with 0·log 0 = 0 (and the 1e-12 floor on the log)."""
    return v * torch.log(v.clamp_min(PROB_FLOOR))


@dataclass
class GiddTerms:
    """Per-token pieces of the GIDD objective, each [..] (the shape of x)."""

    kl: torch.Tensor
    itakura_saito: torch.Tensor
    loss_weight: torch.Tensor
    elbo_weight: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """E_tok = w_elbo·(KL + IS), nats per token (one Monte-Carlo sample of the NELBO integrand)."""
        return self.elbo_weight * (self.kl + self.itakura_saito)

    def loss(self, beta_is: float = 1.0) -> torch.Tensor:
        """L_tok = w·KL + β_IS·w·IS (without z-loss)."""
        return self.loss_weight * (self.kl + beta_is * self.itakura_saito)


def loss_weights(z: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, log_snr: torch.Tensor,
                 mixing: MixingDistribution, beta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, w_elbo), clipped to [0, 1e3] and [0, 1e6]. z, x int [..]; alpha, log_snr fp [..] (broadcast);
    ``beta`` = 1 − α when known more exactly than by subtraction (Sumi's loss: β = t)."""
    beta = 1 - alpha if beta is None else beta
    pi_z = mixing.pi_at(z, log_snr)
    pi_prime_z = mixing.pi_prime_at(z, log_snr)
    snr_if_clean = torch.where(z == x, alpha / beta, 0.0)  # e^λ·1[z = x]; where() avoids inf·0 at α = 1
    w = (pi_z - pi_prime_z) / torch.clamp(pi_z + snr_if_clean, min=WEIGHT_DENOM_FLOOR)
    w_elbo = w / torch.clamp(alpha * beta, min=DENSITY_FLOOR)  # p(λ) = α(1 − α)
    return w.clamp(0, LOSS_WEIGHT_MAX), w_elbo.clamp(0, ELBO_WEIGHT_MAX)


def gidd_terms(logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
               log_snr: torch.Tensor, mixing: MixingDistribution, beta: torch.Tensor | None = None) -> GiddTerms:
    """KL, IS and the weights per token, in closed form.

    Args:
        logits: [..., V] raw model logits (upcast to fp32 here; kept fp64 if given fp64).
        x: [...] clean ids; z: [...] noisy ids (int64).
        alpha, log_snr: broadcastable to x; α must be σ(λ) of the clipped λ (or 1 − t for Sumi's loss).
        mixing: π_λ; its vocab must equal V.
        beta: 1 − α, when known more exactly than by subtraction (Sumi's loss passes β = t).
    """
    v_size = logits.shape[-1]
    if v_size != mixing.vocab_size:
        raise InputError(f"logits have {v_size} columns but the mixing distribution covers {mixing.vocab_size}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(dtype)
    if mixing.mask_id is not None:
        logits = logits.clone()
        logits[..., mixing.mask_id] = MASK_LOGIT  # the model never predicts the mask token
    alpha = torch.as_tensor(alpha, dtype=dtype, device=logits.device).expand(x.shape)
    log_snr = torch.as_tensor(log_snr, dtype=dtype, device=logits.device).expand(x.shape)
    beta = 1 - alpha if beta is None else torch.as_tensor(beta, dtype=dtype, device=logits.device).expand(x.shape)
    n = mixing.num_uniform
    s = mixing.uniform_fraction(log_snr)
    unif_mass = beta * s / n  # β·π(v) at every non-mask id
    mask_mass = beta * (1 - s)  # β·π(m)

    # log p_λ(v) = log(α·x̂(v) + β·π(v)) over all V ids, via logaddexp for accuracy where x̂ is tiny.
    log_x_hat = torch.log_softmax(logits, dim=-1)
    log_pi_mass = torch.log(unif_mass)[..., None].expand_as(log_x_hat)
    if mixing.mask_id is not None:
        log_pi_mass = log_pi_mass.clone()
        log_pi_mass[..., mixing.mask_id] = torch.log(mask_mass)
    log_p = torch.logaddexp(torch.log(alpha)[..., None] + log_x_hat, log_pi_mass)
    if mixing.kind == "uniform":
        # Sumi's released loss clamps its logs at 1e-12 (it binds only once β/V < 1e-12); the mask and hybrid kinds
        # stay in log space, where a floor would cap −log p(x) at 27.6 nats and understate the KL.
        log_p = log_p.clamp_min(LOG_FLOOR)

    x_is_mask = mixing.is_mask(x)
    pi_x = torch.where(x_is_mask, mask_mass, unif_mass)
    q_x = alpha + pi_x  # q_λ at v = x (absolute mass: α + β·π(x))

    # Σ_v q log q: the id x, the other non-mask ids, and the mask id (when it is not x).
    n_other_unif = n - (~x_is_mask).to(dtype)
    neg_entropy = _xlogx(q_x) + n_other_unif * _xlogx(unif_mass)
    if mixing.mask_id is not None:
        neg_entropy = neg_entropy + (~x_is_mask) * _xlogx(mask_mass)

    # Σ_v q log p = α·log p(x) + β·Σ_v π(v) log p(v).
    log_p_x = log_p.gather(-1, x[..., None]).squeeze(-1)
    if mixing.mask_id is not None:
        log_p_m = log_p[..., mixing.mask_id]
        sum_log_p_unif = log_p.sum(-1) - log_p_m
        cross = alpha * log_p_x + unif_mass * sum_log_p_unif + mask_mass * log_p_m
    else:
        cross = alpha * log_p_x + unif_mass * log_p.sum(-1)
    kl = (neg_entropy - cross).clamp_min(0)

    # Itakura-Saito at the observed z.
    q_z = torch.where(z == x, q_x, torch.where(mixing.is_mask(z), mask_mass, unif_mass))
    # Both sides of the ratio are floored alike, so an impossible z (q = 0, e.g. a uniform id under pure mask
    # noise at β = 0) gives r = 1 and IS = 0 instead of ∞ (its weight in any expectation is q = 0).
    log_r = torch.log(q_z.clamp_min(PROB_FLOOR)) - log_p.gather(-1, z[..., None]).squeeze(-1).clamp_min(LOG_FLOOR)
    itakura_saito = torch.exp(log_r) - log_r - 1

    w, w_elbo = loss_weights(z, x, alpha, log_snr, mixing, beta)
    return GiddTerms(kl=kl, itakura_saito=itakura_saito, loss_weight=w, elbo_weight=w_elbo)


def gidd_terms_at_log_snr(logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, log_snr: torch.Tensor,
                          mixing: MixingDistribution) -> GiddTerms:
    """:func:`gidd_terms` with α = σ(clip(λ)) (the general GIDD parametrisation)."""
    log_snr = torch.as_tensor(log_snr, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32,
                              device=logits.device)
    return gidd_terms(logits, x, z, alpha_from_log_snr(log_snr), log_snr, mixing)


def _broadcast_time(t: torch.Tensor | float, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """t of shape [B], [B,1], [B,S] or a scalar → [B,S] in t's dtype (fp32 if t is not floating), with a clear
    error otherwise."""
    t = torch.as_tensor(t, device=device)
    if not t.is_floating_point():
        t = t.float()
    b, s = shape
    if t.dim() == 1 and t.shape[0] == b:
        t = t[:, None]
    if t.dim() == 0 or (t.dim() == 2 and t.shape[0] == b and t.shape[1] in (1, s)):
        return t.expand(b, s)
    raise InputError(f"t must have shape [B], [B,1] or [B,S] for input [B,S]={list(shape)}, got {list(t.shape)}")


def sumi_loss(logits: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | float, *,
              beta_is: float = 1.0, z_loss: float = 1e-5,
              vocab_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sumi's training loss (``docs/design.md`` §2.5): mean over non-ignored tokens of w·KL + β_IS·w·IS + ζ·lse².

    The fast path: for uniform noise every V-axis quantity reduces to four numbers per token, computed with a
    closed-form backward (:mod:`sumi.diffusion.fused`), so autograd keeps only the logits. It equals
    :func:`sumi_loss_reference` (values, metrics, gradients, the 1e-12 log floor included) and has no host sync
    or data-dependent branch, so it compiles into one graph.

    Args:
        logits: [B,S,V'] model logits; only the first ``vocab_size`` columns are used (a run may pad V).
        z: [B,S] noisy ids the model saw; labels: [B,S] clean ids, −100 = ignore (ids are not range-checked
            here, to keep the hot path free of host syncs: the model's forward validates them).
        t: diffusion time, [B], [B,1] or [B,S]; α = 1 − t.
    Returns:
        (loss, metrics) — loss a differentiable scalar; metrics detached means over counted tokens:
        ``elbo`` (E_tok), ``kl`` (w·KL), ``is`` (w·IS), ``z_loss`` (lse²), ``tokens``.
    """
    v_size = vocab_size or logits.shape[-1]
    logits = logits[..., :v_size]
    logits = logits if logits.dtype == torch.float64 else logits.float()  # fp64 kept for exactness tests
    valid, x, alpha, beta = _loss_inputs(logits, z, labels, t)
    c = beta / v_size  # β·π(v), the same at every id
    log_c = torch.log(c)
    n = z.numel()
    sum_log_p, log_p_x, log_p_z, lse = (v.view(z.shape) for v in UniformLogTerms.apply(
        logits.reshape(n, v_size), x.reshape(n), z.reshape(n), torch.log(alpha).reshape(n), log_c.reshape(n)))
    q_x = alpha + c
    kl = (_xlogx(q_x) + (v_size - 1) * _xlogx(c) - alpha * log_p_x - c * sum_log_p).clamp_min(0)
    log_r = torch.log(torch.where(z == x, q_x, c).clamp_min(PROB_FLOOR)) - log_p_z
    itakura_saito = torch.exp(log_r) - log_r - 1
    w, w_elbo = loss_weights(z, x, alpha, _log_snr(alpha, beta), uniform(v_size), beta)
    terms = GiddTerms(kl=kl, itakura_saito=itakura_saito, loss_weight=w, elbo_weight=w_elbo)
    return _token_mean(terms, lse.pow(2), valid, beta_is, z_loss)


def sumi_loss_reference(logits: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | float, *,
                        beta_is: float = 1.0, z_loss: float = 1e-5,
                        vocab_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`sumi_loss` through the general :func:`gidd_terms` (autograd through V-sized tensors)."""
    v_size = vocab_size or logits.shape[-1]
    logits = logits[..., :v_size]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    valid, x, alpha, beta = _loss_inputs(logits, z, labels, t)
    terms = gidd_terms(logits, x, z, alpha, _log_snr(alpha, beta), uniform(v_size), beta)
    return _token_mean(terms, torch.logsumexp(logits, dim=-1).pow(2), valid, beta_is, z_loss)


def _loss_inputs(logits: torch.Tensor, z: torch.Tensor, labels: torch.Tensor,
                 t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid mask, labels with ignored positions set to id 0, α = 1 − t, β = t), α and β [B,S] formed in t's
    dtype, then in the logits' compute dtype (fp32, or fp64 for fp64 logits)."""
    if labels.shape != z.shape:
        raise InputError(f"labels shape {tuple(labels.shape)} must equal input_ids shape {tuple(z.shape)}")
    valid = labels != IGNORE_INDEX
    x = torch.where(valid, labels, 0)
    alpha, beta = signal_from_time(_broadcast_time(t, z.shape, logits.device))
    return valid, x, alpha.to(logits.dtype), beta.to(logits.dtype)


def _log_snr(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """λ = log α − log β, clipped to [λ_min, λ_max] (as :func:`log_snr_from_alpha`, with the exact β)."""
    return (torch.log(alpha) - torch.log(beta)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)


def _token_mean(terms: GiddTerms, lse_sq: torch.Tensor, valid: torch.Tensor, beta_is: float,
                z_loss: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss L_tok + ζ·lse² averaged over counted tokens, and the detached metrics."""
    loss_tok = terms.loss(beta_is) + z_loss * lse_sq
    weight = valid.to(loss_tok.dtype)
    count = weight.sum().clamp_min(1)

    def mean(v: torch.Tensor) -> torch.Tensor:
        return ((v * weight).sum() / count).detach()

    metrics = {
        "elbo": mean(terms.elbo),
        "kl": mean(terms.loss_weight * terms.kl),
        "is": mean(terms.loss_weight * terms.itakura_saito),
        "z_loss": mean(lse_sq),
        "tokens": weight.sum().detach(),
    }
    return (loss_tok * weight).sum() / count, metrics


def model_loss(config: SumiConfig, logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor,
               t: torch.Tensor | float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of a model with ``config`` on its logits: the one function both the trainer and
    ``model(input_ids, labels=…, t=…)`` call. A causal model (the AR baseline) gets next-token cross-entropy and
    ignores ``t``; a diffusion model gets :func:`sumi_loss` with the config's β_IS and z-loss strength."""
    if config.is_causal:
        return causal_lm_loss(logits, labels)
    if t is None:
        raise InputError("labels were given without t: the Sumi loss needs the diffusion time t in (0,1) per "
                         "sequence [B], [B,1] or per token [B,S]")
    return sumi_loss(logits, input_ids, labels, t, beta_is=config.uniform_diffusion_beta_is,
                     z_loss=config.uniform_diffusion_z_loss_strength, vocab_size=config.vocab_size)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AR baseline's next-token cross-entropy: logits[:, i] predict labels[:, i+1]; −100 ignored.

    Its ``elbo`` metric is the exact NLL in nats/token, comparable with the UDLM's NELBO bound.
    """
    shifted_logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)
    tokens = (targets != IGNORE_INDEX).sum()
    return loss, {"elbo": loss.detach(), "tokens": tokens.detach().float()}
