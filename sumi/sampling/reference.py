"""The straightforward sampler loop: what the fast paths are tested and benchmarked against.

Every step runs a full forward with eager (explicit) sink attention, builds the explicit V-sized clean
distribution and posterior in float64 (:func:`~sumi.sampling.posterior.posterior_probs`), and draws every row with
``torch.multinomial``. No logit reuse, no early stop. Deterministic samplers (greedy, adaptive with T = 0) must give
exactly the fast loop's tokens; the stochastic ones the same distribution.
"""

from __future__ import annotations

import torch

from sumi.diffusion import LOG_SNR_MAX, LOG_SNR_MIN, uniform
from sumi.sampling.posterior import clean_distribution, posterior_probs
from sumi.sampling.schedule import step_log_snrs


@torch.inference_mode()
def reference_generate(model: torch.nn.Module, canvas: torch.Tensor, free_mask: torch.Tensor, *, sampler: str,
                       num_steps: int, schedule: str = "linear", min_log_snr: float = LOG_SNR_MIN,
                       max_log_snr: float = LOG_SNR_MAX, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, tokens_per_step: int = 1,
                       generator: torch.Generator | None = None, stop_after: int | None = None) -> torch.Tensor:
    """Run the ``num_steps``-step schedule from ``canvas`` [B, C] (only its first ``stop_after`` steps when given);
    only ``free_mask`` positions change. Returns the canvas."""
    vocab_size = model.config.vocab_size
    mixing = uniform(vocab_size)
    log_snrs = step_log_snrs(num_steps, schedule, min_log_snr, max_log_snr)
    previous = getattr(model, "attn_implementation", None)
    if previous is not None:
        model.set_attn_implementation("eager")
    try:
        z = canvas.clone()
        for k in range(num_steps if stop_after is None else min(stop_after, num_steps)):
            out = model(z)
            logits = getattr(out, "logits", out)[..., :vocab_size].float()
            if sampler == "ancestral":
                x_hat = clean_distribution(logits, temperature, top_k, top_p)
                post = posterior_probs(x_hat, z, log_snrs[k], log_snrs[k + 1], mixing, min_log_snr, max_log_snr)
                draw = torch.multinomial(post.reshape(-1, vocab_size), 1, generator=generator).view_as(z)
                z = torch.where(free_mask, draw, z)
            elif sampler == "adaptive":
                z = _adaptive_reference(logits, z, free_mask, tokens_per_step, temperature, top_k, top_p, generator)
            else:
                z = torch.where(free_mask, logits.argmax(-1), z)
        return z
    finally:
        if previous is not None:
            model.set_attn_implementation(previous)


def _adaptive_reference(logits, z, free_mask, tokens_per_step, temperature, top_k, top_p, generator):
    """Score every position, commit the top ``tokens_per_step`` free ones per row (explicit softmax)."""
    probs = torch.softmax(logits, dim=-1)
    best, argmax = probs.max(-1)
    score = best - torch.gather(probs, -1, z[..., None]).squeeze(-1)
    score = torch.where(free_mask, score, torch.full_like(score, float("-inf")))
    top = torch.topk(score, min(tokens_per_step, z.shape[1]), dim=-1)
    rows = torch.arange(z.shape[0])[:, None].expand_as(top.indices)
    ok = top.values > float("-inf")
    rows, cols = rows[ok], top.indices[ok]
    if temperature == 0:
        tokens = argmax[rows, cols]
    else:
        x_hat = clean_distribution(logits[rows, cols], temperature, top_k, top_p)
        tokens = torch.multinomial(x_hat, 1, generator=generator).squeeze(-1)
    z = z.clone()
    z[rows, cols] = tokens
    return z
