"""Sampler math: worked posterior numbers, mixture vs explicit posterior, fast vs reference (exact and in
distribution). Sampler tests use small fake models with known logits (docs/design.md §8)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sumi.diffusion import MixingDistribution, alpha_from_log_snr, uniform
from sumi.sampling import generate, plan_canvas, posterior_probs, step_log_snrs, uniform_posterior_weights
from sumi.sampling.config import RELEASE
from sumi.sampling.posterior import clean_distribution, sample_rows, truncate_logits
from sumi.sampling.reference import reference_generate
from sumi.sampling.steps import ancestral_step

WORKED_LOGITS = [1.0, 2.0, 0.5, -1e6, -1.0]  # docs/design.md §2.4 with ℓ[m=3] := −1e6


class FakeModel(nn.Module):
    """logits[b, i] = base[i] + couple·W[z[b, i]]: known logits that still depend on the canvas."""

    def __init__(self, length: int, vocab: int, couple: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.base = nn.Parameter(2 * torch.randn(length, vocab, generator=gen), requires_grad=False)
        self.mix = nn.Parameter(couple * torch.randn(vocab, vocab, generator=gen), requires_grad=False)
        self.config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=length, bos_token_id=0,
                                      eos_token_id=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base[: ids.shape[1]] + self.mix[ids]


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% quantile of χ²(df) (Wilson–Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def two_sample_chi2(a: torch.Tensor, b: torch.Tensor, vocab: int) -> tuple[float, int]:
    """χ² statistic and df for equal-size samples a, b [N, C] of ids, summed over positions."""
    stat, df = 0.0, 0
    for i in range(a.shape[1]):
        ca = torch.bincount(a[:, i], minlength=vocab).double()
        cb = torch.bincount(b[:, i], minlength=vocab).double()
        used = (ca + cb) > 0
        stat += float(((ca - cb)[used] ** 2 / (ca + cb)[used]).sum())
        df += int(used.sum()) - 1
    return stat, df


def test_posterior_worked_numbers():
    x_hat = torch.softmax(torch.tensor(WORKED_LOGITS, dtype=torch.float64), -1)
    uni = MixingDistribution(5, "uniform", mask_id=3)
    p = posterior_probs(x_hat, torch.tensor(2), 0.0, 2.0, uni)
    expected = [0.12728539, 0.31732054, 0.52373716, 0.0, 0.03165691]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), atol=5e-8, rtol=0)
    mask = MixingDistribution(5, "mask", mask_id=3)
    p = posterior_probs(x_hat, torch.tensor(3), 0.0, 2.0, mask)
    expected = [0.17075536, 0.46416120, 0.10356836, 0.23840584, 0.02310923]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), atol=5e-8, rtol=0)
    # the three-part mixture of the fast path is the same distribution
    a_t, a_s = (float(alpha_from_log_snr(torch.tensor(v, dtype=torch.float64))) for v in (0.0, 2.0))
    keep, data, unif = uniform_posterior_weights(x_hat[2], 0.25, a_t, a_s)
    mixture = keep * torch.nn.functional.one_hot(torch.tensor(2), 5) + data * x_hat \
        + unif * uni.pi_vector(torch.tensor(0.0)).double()
    torch.testing.assert_close(mixture, posterior_probs(x_hat, torch.tensor(2), 0.0, 2.0, uni))


def test_mixture_equals_explicit_posterior_random():
    gen = torch.Generator().manual_seed(0)
    vocab = 7
    x_hat = torch.softmax(torch.randn(50, vocab, generator=gen, dtype=torch.float64) * 2, -1)
    z = torch.randint(0, vocab, (50,), generator=gen)
    for lam_t, lam_s in ((-9.0, -3.0), (-1.0, 0.5), (4.0, 9.0)):
        a_t, a_s = (float(alpha_from_log_snr(torch.tensor(v, dtype=torch.float64))) for v in (lam_t, lam_s))
        keep, data, unif = uniform_posterior_weights(x_hat.gather(-1, z[:, None]).squeeze(-1), 1 / vocab, a_t, a_s)
        mix = keep[:, None] * torch.nn.functional.one_hot(z, vocab) + data[:, None] * x_hat + unif[:, None] / vocab
        explicit = posterior_probs(x_hat, z, lam_t, lam_s, uniform(vocab))
        torch.testing.assert_close(mix, explicit)
        torch.testing.assert_close(explicit.sum(-1), torch.ones(50, dtype=torch.float64))


def test_schedules():
    lam = step_log_snrs(4, "linear")
    alpha = torch.linspace(1e-4, 1 - 1e-4, 5, dtype=torch.float64)
    torch.testing.assert_close(lam, torch.log(alpha / (1 - alpha)).clamp(-9, 9))
    assert lam[0] == -9.0 and lam[-1] == 9.0 and bool((lam.diff() > 0).all())
    cos = step_log_snrs(8, "cosine", -5.0, 6.0)
    assert cos[0] == -5.0 and cos[-1] == 6.0 and bool((cos.diff() >= 0).all())
    assert cos[4] == pytest.approx(0.0, abs=1e-12)  # α = 1/2 at mid-schedule


def test_cosine_schedule_is_the_releases():
    """The release: τ = linspace(0.999, 1e-3, K + 1), α = 0.5 + 0.5·cos(πτ), λ = logit(α) clipped to ±9 (an earlier
    version squeezed the cosine into [1e-4, 1 − 1e-4], up to 0.033 off in λ over 64 steps)."""
    tau = torch.linspace(0.999, 1e-3, 65, dtype=torch.float64)
    alpha = 0.5 + 0.5 * torch.cos(torch.pi * tau)
    expected = torch.log(alpha / (1 - alpha)).clamp(-9, 9)
    torch.testing.assert_close(step_log_snrs(64, "cosine"), expected, rtol=0, atol=1e-12)


def test_truncation_topk_topp():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0]])
    out = truncate_logits(logits, 1.0, top_k=2)  # ties with the 2nd largest are kept
    assert torch.isinf(out).tolist() == [[False, True, False, False, True]]
    probs = torch.softmax(logits, -1)[0]  # sorted: .61, .22, .22, .08, .01 (cumulative .61, .84, ...)
    out = truncate_logits(logits, 1.0, top_p=0.7)
    assert torch.isfinite(out[0]).sum() == 2 and torch.isfinite(out[0, 0])
    out = truncate_logits(logits, 1.0, top_p=float(probs.max()) * 0.5)
    assert torch.isfinite(out[0]).tolist() == [True, False, False, False, False]
    torch.testing.assert_close(truncate_logits(logits, 0.5), logits * 2)
    assert clean_distribution(logits, 0.0)[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_sample_rows_matches_probabilities():
    gen = torch.Generator().manual_seed(1)
    logits = torch.tensor([0.0, 1.0, float("-inf"), 2.0]).expand(20000, 4)
    counts = torch.bincount(sample_rows(logits, gen), minlength=4).double() / 20000
    assert counts[2] == 0
    torch.testing.assert_close(counts, torch.softmax(logits[0].double(), -1), atol=0.012, rtol=0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 3, None), (1.3, None, 0.8),
                                                     (0.0, None, None)])
def test_fast_ancestral_step_matches_exact_posterior(temperature, top_k, top_p):
    gen = torch.Generator().manual_seed(2)
    vocab, rows = 6, 20000
    logits = (torch.randn(1, 1, vocab, generator=gen) * 1.5).expand(rows, 1, vocab).contiguous()
    z = torch.full((rows, 1), 4, dtype=torch.long)
    lam_t, lam_s = -0.5, 1.0
    a_t, a_s = (float(alpha_from_log_snr(torch.tensor(v, dtype=torch.float64))) for v in (lam_t, lam_s))
    new, committed = ancestral_step(lambda mask: logits[mask], z, torch.ones_like(z, dtype=torch.bool),
                                    alpha_t=a_t, alpha_s=a_s, log_snr_t=lam_t, mixing=uniform(vocab),
                                    temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    x_hat = clean_distribution(logits[0, 0], temperature, top_k, top_p)
    exact = posterior_probs(x_hat, torch.tensor(4), lam_t, lam_s, uniform(vocab))
    counts = torch.bincount(new[:, 0], minlength=vocab).double()
    expected = exact * rows
    used = expected > 0
    assert counts[~used].sum() == 0
    stat = float(((counts - expected)[used] ** 2 / expected[used]).sum())
    assert stat < chi2_critical(int(used.sum()) - 1)
    assert bool(committed[new != z].all())  # every changed position was resampled


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_fast_and_reference_ancestral_agree_in_distribution(temperature):
    length, vocab, rows, steps = 4, 6, 3000, 5
    model = FakeModel(length, vocab, couple=1.5)
    start = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(3))
    fast = generate(model, None, initial_canvas=start, max_new_tokens=length, anchor_eosbos=False,
                    sampler="ancestral", num_denoising_steps=steps, temperature=temperature, seed=4,
                    trim_at_eos=False).canvas
    slow = reference_generate(model, start, torch.ones_like(start, dtype=torch.bool), sampler="ancestral",
                              num_steps=steps, temperature=temperature, generator=torch.Generator().manual_seed(5))
    stat, df = two_sample_chi2(fast, slow, vocab)
    assert stat < chi2_critical(df), (stat, df)
    # and they are not trivially equal: different RNG streams
    assert not torch.equal(fast, slow)


def test_fast_and_reference_adaptive_sampling_agree_in_distribution():
    length, vocab, rows, steps = 4, 6, 3000, 3
    model = FakeModel(length, vocab, couple=1.0, seed=1)
    start = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(6))
    fast = generate(model, None, RELEASE, initial_canvas=start, max_new_tokens=length, anchor_eosbos=False,
                    sampler="adaptive", num_denoising_steps=steps, temperature=0.8, top_k=4, seed=7,
                    trim_at_eos=False).canvas
    slow = reference_generate(model, start, torch.ones_like(start, dtype=torch.bool), sampler="adaptive",
                              num_steps=steps, temperature=0.8, top_k=4, generator=torch.Generator().manual_seed(8))
    stat, df = two_sample_chi2(fast, slow, vocab)
    assert stat < chi2_critical(df), (stat, df)


@pytest.mark.parametrize("sampler,tokens_per_step", [("greedy", 1), ("adaptive", 1), ("adaptive", 3)])
def test_deterministic_samplers_match_reference_token_for_token(tiny_model, sampler, tokens_per_step):
    prompts = [[0, 17, 33, 65, 90], [0, 200]]
    steps = 16
    plan = plan_canvas(prompts, vocab_size=512, max_positions=256, bos_id=0, eos_id=1, max_new_tokens=12,
                       canvas_length=32, generator=torch.Generator().manual_seed(9))
    kw = dict(max_new_tokens=12, sampler=sampler, temperature=0.0, tokens_per_step=tokens_per_step,
              num_denoising_steps=steps, initial_canvas=plan.canvas)
    # the released sampler (its preset denoises the tail after the anchor, as the plan and the reference do)
    fast = generate(tiny_model, prompts, RELEASE, early_stop=False, **kw)
    fast_early = generate(tiny_model, prompts, RELEASE, early_stop=True, **kw)
    slow = reference_generate(tiny_model, plan.canvas, plan.free_mask, sampler=sampler, num_steps=steps,
                              temperature=0.0, tokens_per_step=tokens_per_step)
    assert torch.equal(fast.canvas, slow)
    assert torch.equal(fast_early.canvas, slow)
    assert fast_early.nfe <= fast.nfe <= steps
    assert tiny_model.attn_implementation == "sdpa"  # the reference restored the attention path


def test_gumbel_argmax_matches_probabilities():
    from sumi.sampling.posterior import gumbel_argmax

    logits = torch.tensor([0.0, 1.0, float("-inf"), 2.0]).expand(20000, 4)
    counts = torch.bincount(gumbel_argmax(logits, torch.Generator().manual_seed(3)), minlength=4).double() / 20000
    assert counts[2] == 0
    torch.testing.assert_close(counts, torch.softmax(logits[0].double(), -1), atol=0.012, rtol=0)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.8, 20), (0.0, None)])
def test_lazy_head_equals_full_forward(tiny_model, temperature, top_k):
    """The Sumi fast path runs lm_head only where the posterior needs it; same seed, same tokens as the full
    forward of a plain wrapper model (which the loop cannot split)."""

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, ids):
            return self.inner(ids).logits

    kw = dict(max_new_tokens=12, canvas_length=32, sampler="ancestral", temperature=temperature, top_k=top_k,
              num_denoising_steps=16, seed=13)
    fast = generate(tiny_model, [[0, 9, 8], [0, 4]], **kw)
    full = generate(Wrapped(tiny_model), [[0, 9, 8], [0, 4]], **kw)
    assert torch.equal(fast.canvas, full.canvas)


class PassThrough(nn.Module):
    """A user's wrapper in the style of DDP / torch.compile / PEFT: forwards every argument unchanged."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_wrapped_model_keeps_the_split_head_fast_path(tiny_model):
    """The sampler talks to the model only through its forward's keywords, so a pass-through wrapper keeps
    the fast path: the head sees only the positions the ancestral step asks for, and the tokens are those of
    the bare model."""
    head_rows = []
    hook = tiny_model.lm_head.register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[:-1].numel()))
    kw = dict(max_new_tokens=12, canvas_length=32, sampler="ancestral", num_denoising_steps=16, seed=13)
    try:
        bare = generate(tiny_model, [[0, 9, 8], [0, 4]], **kw)
        bare_rows, head_rows[:] = list(head_rows), []
        wrapped = generate(PassThrough(tiny_model), [[0, 9, 8], [0, 4]], **kw)
    finally:
        hook.remove()
    assert torch.equal(bare.canvas, wrapped.canvas) and bare.nfe == wrapped.nfe
    assert head_rows == bare_rows
    assert sum(head_rows) < bare.nfe * 2 * 32  # far fewer head rows than full forwards would run


def test_forward_logits_at_and_hidden_reuse_equal_the_full_forward(tiny_model):
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(2, 20, generator=torch.Generator().manual_seed(1)) < 0.3
    full = tiny_model(ids)
    selected = tiny_model(ids, logits_at=mask, return_last_hidden_state=True)
    torch.testing.assert_close(selected.logits, full.logits[mask])
    again = tiny_model(None, last_hidden_state=selected.last_hidden_state)
    torch.testing.assert_close(again.logits, full.logits)


def test_chunked_row_reductions_equal_full(monkeypatch):
    import sumi.sampling.posterior as posterior

    monkeypatch.setattr(posterior, "CHUNK_ELEMENTS", 1000)  # 3 rows per chunk at V = 300
    logits = torch.randn(10, 300, generator=torch.Generator().manual_seed(0)) * 3
    z = torch.randint(0, 300, (10,), generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, -1)
    p_max, p_z = posterior.confidence(logits, z)
    assert torch.equal(p_max, probs.amax(-1)) and torch.equal(p_z, probs[torch.arange(10), z])
    assert torch.equal(posterior.log_normalizer(logits), torch.logsumexp(logits, -1))
