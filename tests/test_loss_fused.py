"""The fast uniform GIDD loss (closed-form backward) equals the reference (values, metrics and gradients)."""

from __future__ import annotations

import pytest
import torch

from sumi.diffusion import TimeSampler, alpha_from_time, gidd_terms, uniform
from sumi.diffusion.loss import sumi_loss, sumi_loss_reference


def _case(dtype, vocab=37, b=3, s=5, seed=0, per_token=0.5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (b, s), generator=gen)
    t = TimeSampler(per_token_fraction=per_token).sample(b, s, generator=gen)
    z = uniform(vocab).sample_zt(x, alpha_from_time(t), generator=gen)
    z[0, :2] = x[0, :2]  # some z == x and some z != x
    logits = (3 * torch.randn(b, s, vocab, generator=gen)).to(dtype)
    labels = x.clone()
    labels[1, 0] = -100
    return logits, z, labels, t


def reference_fp64(logits, z, labels, t, beta_is=1.0, zeta=1e-5):
    """sumi_loss written out in float64 from the core's gidd_terms, with α = 1 − t and β = t exactly."""
    valid = labels != -100
    x = torch.where(valid, labels, 0)
    beta = t.double().expand(z.shape)
    alpha = 1 - beta
    terms = gidd_terms(logits, x, z, alpha, torch.log(alpha / beta).clamp(-9, 9), uniform(logits.shape[-1]), beta)
    loss_tok = terms.loss(beta_is) + zeta * torch.logsumexp(logits, -1).pow(2)
    return (loss_tok * valid).sum() / valid.sum(), (terms.elbo * valid).sum() / valid.sum()


def test_fused_loss_matches_reference_fp64():
    logits, z, labels, t = _case(torch.float64)
    ref_logits, new_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ref, ref_elbo = reference_fp64(ref_logits, z, labels, t)
    new, metrics = sumi_loss(new_logits, z, labels, t.double())
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metrics["elbo"], ref_elbo.detach(), rtol=1e-12, atol=1e-12)
    ref.backward()
    new.backward()
    torch.testing.assert_close(new_logits.grad, ref_logits.grad, rtol=1e-10, atol=1e-12)


def test_fused_loss_matches_reference_fp32():
    logits, z, labels, t = _case(torch.float32, vocab=300, b=2, s=16)
    ref_logits, new_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ref, ref_metrics = sumi_loss_reference(ref_logits, z, labels, t)
    new, new_metrics = sumi_loss(new_logits, z, labels, t)
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    for key in ref_metrics:
        torch.testing.assert_close(new_metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-6)
    ref.backward()
    new.backward()
    torch.testing.assert_close(new_logits.grad, ref_logits.grad, rtol=1e-4, atol=1e-8)


def test_fused_loss_gradcheck_and_padded_vocab():
    logits, z, labels, t = _case(torch.float64, vocab=11, b=2, s=3, seed=1, per_token=0.0)
    logits.requires_grad_(True)
    t = t.double()
    assert torch.autograd.gradcheck(lambda lg: sumi_loss(lg, z, labels, t[:, 0])[0], (logits,))
    padded = torch.cat([logits.detach(), torch.randn(2, 3, 4, dtype=torch.float64)], dim=-1)
    new, _ = sumi_loss(padded, z, labels, t[:, 0], vocab_size=11)
    torch.testing.assert_close(new, reference_fp64(logits.detach(), z, labels, t[:, :1])[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize(("vocab", "tiny_t"), [(37, 1e-15), (100278, 6e-8)])
def test_fused_loss_matches_reference_where_the_log_floor_binds(vocab, tiny_t):
    """Tiny t makes β/V ≤ 1e-12, so the 1e-12 floor on log p binds: with α rounded to 1 in fp32 (β = 0), and
    with 0 < β/V < 1e-12 at Sumi's vocabulary (β = 6e-8 in fp32)."""
    logits, z, labels, t = _case(torch.float64, vocab=vocab, b=2, s=3)
    t = t.clone()
    t[0] = tiny_t
    ref_logits, new_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ref, ref_metrics = sumi_loss_reference(ref_logits, z, labels, t)
    new, new_metrics = sumi_loss(new_logits, z, labels, t)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_metrics["elbo"], ref_metrics["elbo"], rtol=1e-12, atol=1e-12)
    ref.backward()
    new.backward()
    torch.testing.assert_close(new_logits.grad, ref_logits.grad, rtol=1e-10, atol=1e-12)


def test_loss_keeps_the_dtype_of_t_and_takes_beta_from_t():
    """fp64 logits and fp64 t: 1 − α is t itself, not recomputed from an fp32 α (which was up to 1e-4 off in
    relative terms near the smallest t, and moved the loss by ~1e-6 relative)."""
    logits, z, labels, _ = _case(torch.float64, vocab=37, b=2, s=4, seed=3)
    t = torch.tensor([1.2339e-4, 0.3], dtype=torch.float64)
    expected, expected_elbo = reference_fp64(logits, z, labels, t[:, None])
    loss, metrics = sumi_loss(logits, z, labels, t)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(metrics["elbo"], expected_elbo, rtol=1e-13, atol=0)
    assert alpha_from_time(t).dtype == torch.float64
