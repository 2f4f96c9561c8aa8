"""GIDD math against the worked numbers of docs/design.md §2.4, a brute-force V-sized reference, and the
integral identities (uniform predictor → log N, perfect predictor → 0)."""

from __future__ import annotations

import math

import pytest
import torch

from sumi.diffusion import (
    MixingDistribution,
    TimeSampler,
    alpha_from_log_snr,
    gidd_terms,
    gidd_terms_at_log_snr,
    log_snr_from_alpha,
    sumi_loss,
    time_range,
    uniform,
)
from sumi.errors import ConfigError

V, MASK = 5, 3
X = 1
LOGITS = torch.tensor([1.0, 2.0, 0.5, 7.0, -1.0], dtype=torch.float64)
MIXINGS = {
    "uniform": MixingDistribution(V, "uniform", mask_id=MASK),
    "mask": MixingDistribution(V, "mask", mask_id=MASK),
    "hybrid": MixingDistribution(V, "hybrid", mask_id=MASK, scale=1.0, shift=0.0),
}


def _terms(kind, log_snr, z):
    return gidd_terms_at_log_snr(LOGITS[None], torch.tensor([X]), torch.tensor([z]),
                                 torch.tensor([float(log_snr)], dtype=torch.float64), MIXINGS[kind])


# (λ, z, α, w, p(λ), w_elbo, KL, IS, L_tok, E_tok) — the table of docs/design.md §2.4, pure uniform.
UNIFORM_TABLE = [
    (0, 1, 0.5, 0.2, 0.25, 0.8, 0.08548578, 0.07980704, 0.03305856, 0.13223426),
    (0, 2, 0.5, 1.0, 0.25, 4.0, 0.08548578, 0.08203473, 0.16752051, 0.67008205),
    (2, 1, 0.88079708, 0.03272656, 0.10499359, 0.31170053, 0.30431255, 0.13266649, 0.01430082, 0.13620660),
    (-2, 4, 0.11920292, 1.0, 0.10499359, 9.52439138, 0.00561829, 0.00013201, 0.00575030, 0.05476812),
]


@pytest.mark.parametrize("row", UNIFORM_TABLE)
def test_uniform_worked_numbers(row):
    log_snr, z, alpha, w, density, w_elbo, kl, is_, loss, elbo = row
    terms = _terms("uniform", log_snr, z)
    lam = torch.tensor(float(log_snr), dtype=torch.float64)
    assert alpha_from_log_snr(lam).item() == pytest.approx(alpha, abs=1e-8)
    assert alpha * (1 - alpha) == pytest.approx(density, abs=1e-8)
    for got, want in [(terms.loss_weight, w), (terms.elbo_weight, w_elbo), (terms.kl, kl),
                      (terms.itakura_saito, is_), (terms.loss(1.0), loss), (terms.elbo, elbo)]:
        assert got.item() == pytest.approx(want, abs=1e-8)


def test_mask_worked_numbers():
    masked = _terms("mask", 0, MASK)
    assert masked.loss_weight.item() == pytest.approx(1.0)
    assert masked.elbo_weight.item() == pytest.approx(4.0)
    assert masked.kl.item() == pytest.approx(0.24759095, abs=1e-8)
    assert masked.kl.item() == pytest.approx(-0.5 * math.log(0.60946), abs=1e-5)
    assert masked.itakura_saito.item() == pytest.approx(0.0, abs=1e-12)
    assert masked.elbo.item() == pytest.approx(0.99036380, abs=1e-8)
    clean = _terms("mask", 0, X)
    assert clean.loss(1.0).item() == 0.0 and clean.elbo.item() == 0.0


def test_hybrid_worked_numbers():
    mixing = MIXINGS["hybrid"]
    lam = torch.tensor(0.0, dtype=torch.float64)
    torch.testing.assert_close(mixing.pi_vector(lam), torch.tensor([.125, .125, .125, .5, .125], dtype=torch.float64))
    ids = torch.arange(V)
    torch.testing.assert_close(mixing.pi_prime_at(ids, lam.expand(V)),
                               torch.tensor([.0625, .0625, .0625, -.25, .0625], dtype=torch.float64))
    for z, w, is_ in [(1, 0.0555556, 0.10533480), (2, 0.5, 0.21511174), (3, 1.5, 0.0)]:
        terms = _terms("hybrid", 0, z)
        assert terms.loss_weight.item() == pytest.approx(w, abs=1e-7)
        assert terms.kl.item() == pytest.approx(0.11604897, abs=1e-8)
        assert terms.itakura_saito.item() == pytest.approx(is_, abs=1e-8)


def _brute_force(logits, x, z, log_snr, mixing):
    """Explicit V-sized q, p and KL in float64 (the slow reference path)."""
    alpha = torch.sigmoid(log_snr.clamp(-9, 9))
    logits = logits.clone()
    if mixing.mask_id is not None:
        logits[..., mixing.mask_id] = -1e6
    x_hat = torch.softmax(logits, -1)
    pi = mixing.pi_vector(log_snr)
    one_hot = torch.nn.functional.one_hot(x, V).to(torch.float64)
    q = alpha[..., None] * one_hot + (1 - alpha[..., None]) * pi
    p = alpha[..., None] * x_hat + (1 - alpha[..., None]) * pi
    log = lambda v: torch.log(v.clamp_min(1e-12))  # noqa: E731
    kl = (q * (log(q) - log(p))).sum(-1)
    qz, pz = q.gather(-1, z[..., None])[..., 0], p.gather(-1, z[..., None])[..., 0]
    r = qz / pz
    return kl, r - torch.log(r) - 1


@pytest.mark.parametrize("kind", ["uniform", "mask", "hybrid"])
def test_closed_form_matches_brute_force(kind):
    gen = torch.Generator().manual_seed(0)
    n = 64
    logits = torch.randn(n, V, generator=gen, dtype=torch.float64) * 3
    x = torch.randint(0, V, (n,), generator=gen)
    x = torch.where(x == MASK, 0, x)
    log_snr = torch.empty(n, dtype=torch.float64).uniform_(-10, 10, generator=gen)
    mixing = MIXINGS[kind]
    z = mixing.sample_zt(x, alpha_from_log_snr(log_snr), log_snr, generator=gen)
    terms = gidd_terms_at_log_snr(logits, x, z, log_snr, mixing)
    kl, is_ = _brute_force(logits, x, z, log_snr, mixing)
    torch.testing.assert_close(terms.kl, kl, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(terms.itakura_saito, is_, atol=1e-9, rtol=1e-7)


def _expected_integrand(log_snr, x_hat_logits, kind, clip=True):
    """Σ_z q_λ(z|x)·w·(KL + IS) on a λ grid (float64); ``clip=False`` uses the unclipped α = σ(λ)."""
    mixing = MIXINGS[kind]
    g = log_snr.shape[0]
    total = torch.zeros(g, dtype=torch.float64)
    alpha = torch.sigmoid(log_snr.clamp(-9, 9) if clip else log_snr)
    for z in range(V):
        zs = torch.full((g,), z)
        xs = torch.full((g,), X)
        terms = gidd_terms(x_hat_logits.expand(g, V), xs, zs, alpha, log_snr, mixing)
        q_z = alpha * (z == X) + (1 - alpha) * mixing.pi_at(zs, log_snr)
        total += q_z * terms.loss_weight * (terms.kl + terms.itakura_saito)
    return total


def _simpson(values, grid):
    h = (grid[-1] - grid[0]) / (len(grid) - 1)
    return float(h / 3 * (values[0] + values[-1] + 4 * values[1:-1:2].sum() + 2 * values[2:-1:2].sum()))


@pytest.mark.parametrize(("kind", "truncated"), [("uniform", 1.385241), ("mask", 1.385952), ("hybrid", 1.385164)])
def test_uniform_predictor_integrates_to_log_n(kind, truncated):
    grid = torch.linspace(-9, 9, 4001, dtype=torch.float64)
    uniform_logits = torch.zeros(V, dtype=torch.float64)  # x̂ uniform over the N = 4 non-mask ids
    value = _simpson(_expected_integrand(grid, uniform_logits, kind), grid)
    assert value == pytest.approx(truncated, abs=2e-6)
    # Over the whole real line (unclipped α) the integral is exactly log N.
    wide = torch.linspace(-40, 40, 16001, dtype=torch.float64)
    untruncated = _simpson(_expected_integrand(wide, uniform_logits, kind, clip=False), wide)
    assert untruncated == pytest.approx(math.log(4), abs=1e-6)


def test_perfect_predictor_has_zero_nelbo():
    grid = torch.linspace(-9, 9, 401, dtype=torch.float64)
    perfect = torch.full((V,), -50.0, dtype=torch.float64)
    perfect[X] = 50.0
    for kind in MIXINGS:
        assert _simpson(_expected_integrand(grid, perfect, kind), grid) == pytest.approx(0.0, abs=1e-12)


def test_sumi_loss_equals_the_release_formula():
    """docs/design.md §2.5 spelled out for pure uniform noise over all V ids (no mask)."""
    gen = torch.Generator().manual_seed(0)
    v, b, s = 11, 2, 6
    logits = torch.randn(b, s, v, generator=gen)
    x = torch.randint(0, v, (b, s), generator=gen)
    t = torch.tensor([0.25, 0.9])
    z = uniform(v).sample_zt(x, (1 - t)[:, None], generator=gen)
    loss, metrics = sumi_loss(logits, z, x, t, beta_is=1.0, z_loss=1e-5)

    alpha = (1 - t)[:, None, None].double()
    x_hat = torch.softmax(logits.double(), -1)
    q = alpha * torch.nn.functional.one_hot(x, v) + (1 - alpha) / v
    p = alpha * x_hat + (1 - alpha) / v
    kl = (q * (q.log() - p.log())).sum(-1)
    r = q.gather(-1, z[..., None])[..., 0] / p.gather(-1, z[..., None])[..., 0]
    a = alpha[..., 0]
    w = torch.where(z != x, torch.ones_like(a.expand(b, s)), (1 - a) / (1 + (v - 1) * a))
    expected = (w * kl + w * (r - r.log() - 1) + 1e-5 * torch.logsumexp(logits.double(), -1) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    expected_elbo = (w / (a * (1 - a)) * (kl + r - r.log() - 1)).mean()
    assert metrics["elbo"].item() == pytest.approx(expected_elbo.item(), rel=1e-5)


def test_time_sampler_range_and_per_token_fraction():
    gen = torch.Generator().manual_seed(0)
    t = TimeSampler(per_token_fraction=0.25).sample(4000, 8, generator=gen)
    t_min, t_max = time_range()
    assert t.min() >= t_min and t.max() <= t_max
    assert t_min == pytest.approx(1 - 0.99987661, abs=1e-8) and t_max == pytest.approx(1 - 1.2339e-4, abs=1e-8)
    per_token = (t != t[:, :1]).any(-1).float().mean().item()
    assert per_token == pytest.approx(0.25, abs=0.03)
    assert TimeSampler(per_token_fraction=0.0).sample(50, 8, generator=gen).std(-1).max() == 0
    with pytest.raises(ConfigError, match="per_token_fraction"):
        TimeSampler(per_token_fraction=1.5)


def test_sample_zt_keeps_with_probability_alpha_and_never_draws_the_mask():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((200, 200), 1)
    mixing = MIXINGS["uniform"]
    z = mixing.sample_zt(x, torch.tensor(0.3), generator=gen)
    assert not (z == MASK).any()
    keep_rate = (z == x).float().mean().item()
    assert keep_rate == pytest.approx(0.3 + 0.7 / 4, abs=0.01)  # kept, or redrawn as x itself (1/N)
    masked = MIXINGS["mask"].sample_zt(x, torch.tensor(0.3), generator=gen)
    assert set(masked.unique().tolist()) == {1, MASK}


def test_log_snr_alpha_round_trip_and_clipping():
    lam = torch.linspace(-9, 9, 19, dtype=torch.float64)
    torch.testing.assert_close(log_snr_from_alpha(alpha_from_log_snr(lam)), lam)
    assert alpha_from_log_snr(torch.tensor(50.0)).item() == pytest.approx(0.99987661, abs=1e-8)
    assert log_snr_from_alpha(torch.tensor(1.0)).item() == 9.0


def test_gidd_terms_rejects_mismatched_vocab():
    from sumi.errors import InputError

    with pytest.raises(InputError, match="logits have 5 columns"):
        gidd_terms(LOGITS[None], torch.tensor([1]), torch.tensor([1]), torch.tensor([0.5]), torch.tensor([0.0]),
                   uniform(7))


@pytest.mark.parametrize("kind", ["mask", "hybrid"])
def test_kl_in_log_space_where_the_model_is_very_wrong(kind):
    """Mask noise, V = 1000, −log x̂(x) = 50, λ = 0, z = mask: KL = α·50 = 25 and w_elbo = 4, so the per-token ELBO
    is 100 nats. A 1e-12 floor on p_λ capped −log p(x) at 27.6 and gave 53.9. Hybrid: the explicit log-space sum."""
    vocab, mask_id, x = 1000, 999, 0
    logits = torch.full((1, vocab), 50.0 - math.log(vocab - 2), dtype=torch.float64)
    logits[0, x] = 0.0
    assert float(torch.log_softmax(logits.masked_fill(torch.arange(vocab) == mask_id, -1e6), -1)[0, x]) == \
        pytest.approx(-50.0, abs=1e-9)
    mixing = MixingDistribution(vocab_size=vocab, kind=kind, mask_id=mask_id)
    terms = gidd_terms_at_log_snr(logits, torch.tensor([x]), torch.tensor([mask_id]), torch.zeros(1), mixing)
    if kind == "mask":
        assert float(terms.elbo[0]) == pytest.approx(100.0, rel=1e-9)
    # Any kind: KL equals the explicit V-sized sum computed in log space.
    alpha = 0.5
    pi = mixing.pi_vector(torch.zeros(()).double()).double()
    log_x_hat = torch.log_softmax(logits.masked_fill(torch.arange(vocab) == mask_id, -1e6), -1)[0]
    q = alpha * torch.nn.functional.one_hot(torch.tensor(x), vocab).double() + (1 - alpha) * pi
    log_p = torch.logaddexp(math.log(alpha) + log_x_hat, torch.log((1 - alpha) * pi))
    explicit = torch.where(q > 0, q * (torch.log(q) - log_p), 0.0).sum()
    assert float(terms.kl[0]) == pytest.approx(float(explicit), rel=1e-9)
