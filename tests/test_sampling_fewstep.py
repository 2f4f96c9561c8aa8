"""The few-step samplers (Ψ, threshold, greedy tail) and sumi's own defaults (fitted canvas, frozen tail)."""

from __future__ import annotations

import pytest
import torch
from test_sampling_math import FakeModel, chi2_critical, two_sample_chi2

from sumi.diffusion import uniform
from sumi.sampling import generate, posterior_probs
from sumi.sampling.config import RELEASE, SamplingConfig
from sumi.sampling.fewstep import psi_weights


def _explicit_psi(x_hat: torch.Tensor, z: int, alpha_t: float, alpha_s: float, kappa: float) -> torch.Tensor:
    """p_Ψ over V built the long way (float64): κ·posterior + (1 − κ)·(α_s·p(x | z_t) + (1 − α_s)·π)."""
    vocab = x_hat.shape[-1]
    uni = uniform(vocab)
    log_snr = lambda a: torch.logit(torch.tensor(a, dtype=torch.float64))  # noqa: E731
    posterior = posterior_probs(x_hat, torch.tensor(z), log_snr(alpha_t), log_snr(alpha_s), uni)
    likelihood = alpha_t * torch.nn.functional.one_hot(torch.tensor(z), vocab).double() + (1 - alpha_t) / vocab
    clean = x_hat * likelihood
    clean = clean / clean.sum()
    return kappa * posterior + (1 - kappa) * (alpha_s * clean + (1 - alpha_s) / vocab)


@pytest.mark.parametrize("kappa", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("alpha_t,alpha_s", [(0.1, 0.3), (0.6, 0.61), (0.5, 0.5)])
def test_psi_mixture_weights_equal_the_explicit_distribution(kappa, alpha_t, alpha_s):
    vocab, z = 7, 2
    x_hat = torch.softmax(torch.tensor([0.3, -1.0, 1.2, 0.0, 2.0, -0.5, 0.7], dtype=torch.float64), -1)
    keep, data, unif = psi_weights(x_hat[z], 1.0 / vocab, alpha_t, alpha_s, kappa)
    mixture = keep * torch.nn.functional.one_hot(torch.tensor(z), vocab).double() + data * x_hat + unif / vocab
    torch.testing.assert_close(mixture, _explicit_psi(x_hat, z, alpha_t, alpha_s, kappa), rtol=0, atol=1e-12)
    assert float(keep + data + unif) == pytest.approx(1.0, abs=1e-12)


def test_psi_with_kappa_one_is_ancestral_token_for_token(tiny_model):
    kw = dict(max_new_tokens=12, num_denoising_steps=10, temperature=0.9, seed=3)
    psi = generate(tiny_model, [[0, 4, 5], [0, 9]], sampler="psi", psi_kappa=1.0, **kw)
    ancestral = generate(tiny_model, [[0, 4, 5], [0, 9]], sampler="ancestral", **kw)
    assert torch.equal(psi.canvas, ancestral.canvas) and psi.nfe == ancestral.nfe


def test_psi_step_draws_its_distribution():
    """One Ψ step on a fake model with known logits: the empirical distribution of each position matches the
    explicit p_Ψ (χ² at the 0.1% level, 4000 rows)."""
    from sumi.sampling.fewstep import psi_step

    length, vocab, rows = 3, 5, 4000
    model = FakeModel(length, vocab, couple=0.0, seed=2)  # logits independent of the canvas
    canvas = torch.tensor([[0, 3, 4]]).expand(rows, length).clone()
    logits = model(canvas[:1])[0].double()
    alpha_t, alpha_s, kappa = 0.3, 0.5, 0.4
    log_snr_t = float(torch.logit(torch.tensor(alpha_t, dtype=torch.float64)))
    flat_logits = model(canvas).float()
    new, _ = psi_step(lambda mask: flat_logits[mask], canvas, torch.ones_like(canvas, dtype=torch.bool),
                      alpha_t=alpha_t, alpha_s=alpha_s, log_snr_t=log_snr_t, kappa=kappa, mixing=uniform(vocab),
                      temperature=1.0, top_k=None, top_p=None, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([_explicit_psi(torch.softmax(logits[i], -1), int(canvas[0, i]), alpha_t, alpha_s, kappa)
                            for i in range(length)])
    draws = torch.stack([torch.multinomial(expected[i], rows, replacement=True,
                                           generator=torch.Generator().manual_seed(10 + i)) for i in range(length)], 1)
    stat, df = two_sample_chi2(new, draws, vocab)
    assert stat < chi2_critical(df), (stat, df)


@pytest.mark.parametrize("options", [dict(sampler="psi", psi_kappa=0.5, temperature=1.0),
                                     dict(sampler="threshold", threshold=0.5, temperature=0.8),
                                     dict(sampler="threshold", threshold=0.9, temperature=0.0),
                                     dict(sampler="ancestral", greedy_tail=True)])
def test_new_samplers_keep_frozen_positions_and_reproduce(tiny_model, options):
    prompts = [[0, 5, 6], [0, 7, 8, 9, 10]]
    frozen = [[(10, 44)], [(14, 46)]]
    kw = dict(max_new_tokens=16, num_denoising_steps=12, frozen=frozen, return_trajectory=True,
              trim_at_eos=False, **options)
    out = generate(tiny_model, prompts, seed=1, **kw)
    traj = out.trajectory
    fixed = traj.frozen_mask
    for frame in traj.frames:
        assert torch.equal(frame.canvas[fixed], traj.frames[0].canvas[fixed])
        assert not bool(frame.committed[fixed].any())
    assert out.canvas[0, 10].item() == 44 and out.canvas[1, 14].item() == 46
    assert out.canvas[0, 19:21].tolist() == [1, 0] and out.canvas[1, 21:23].tolist() == [1, 0]
    assert out.canvas.shape[1] == 5 + 16 + 2  # the fitted canvas: the longest row's prompt + budget + anchor
    assert bool(fixed[0, 21:].all())  # row 0's tail (2 positions) is frozen
    again = generate(tiny_model, prompts, seed=1, **kw)
    assert torch.equal(out.canvas, again.canvas)
    assert out.nfe <= 12
    # every free position was written at least once: nothing of the initial noise is left untouched
    touched = torch.stack([f.committed for f in traj.frames]).any(0)
    assert bool(touched[~fixed].all())


def test_threshold_stops_when_everything_is_committed():
    length, vocab = 10, 6
    confident = FakeModel(length, vocab, couple=0.0)
    confident.base.data = torch.full((length, vocab), -20.0)
    confident.base.data[:, 3] = 20.0  # x̂ is (nearly) one-hot on id 3 everywhere
    out = generate(confident, None, max_new_tokens=length, anchor_eosbos=False, sampler="threshold", threshold=0.9,
                   num_denoising_steps=8, seed=0, trim_at_eos=False)
    assert out.steps_run == 1 and out.nfe == 1 and out.canvas.tolist() == [[3] * length]
    unsure = FakeModel(length, vocab, couple=0.0)
    unsure.base.data = torch.zeros(length, vocab)  # x̂ uniform: below any threshold > 1/V
    out = generate(unsure, None, max_new_tokens=length, anchor_eosbos=False, sampler="threshold", threshold=0.9,
                   tokens_per_step=3, num_denoising_steps=8, seed=0, trim_at_eos=False)
    assert out.steps_run == 4  # 3 + 3 + 3 + 1 positions, the minimum per step


def test_greedy_tail_sets_the_argmax_in_the_last_step(tiny_model):
    seen = {}

    def record(info):
        if info.step == info.num_steps - 1:
            seen["argmax"] = info.source.full().argmax(-1).clone()
        return None

    out = generate(tiny_model, [[0, 4, 5]], max_new_tokens=10, num_denoising_steps=6, sampler="ancestral",
                   greedy_tail=True, seed=2, callback=record)
    free = ~out.frozen_mask
    assert torch.equal(out.canvas[free], seen["argmax"][free])


def test_release_preset_reproduces_model_generate_and_the_old_canvas(tiny_model):
    kw = dict(max_new_tokens=8, seed=5)
    released = generate(tiny_model, [[0, 4, 5]], RELEASE, **kw)
    assert torch.equal(tiny_model.generate([[0, 4, 5]], **kw).canvas, released.canvas)
    assert released.canvas.shape[1] == 256  # 2048 capped at sumi-tiny's positions, tail denoised
    ours = generate(tiny_model, [[0, 4, 5]], **kw)
    assert ours.canvas.shape[1] == 3 + 8 + 2 and not bool(ours.frozen_mask[0, 3:11].any())
    assert SamplingConfig().fit_canvas and SamplingConfig().tail == "freeze"


def test_trajectory_views_show_the_tail_and_count_its_writes(tiny_model, tiny_tokenizer, tmp_path):
    from sumi.sampling.visual import trajectory_html, write_trajectory_gif, writes_by_region

    kw = dict(max_new_tokens=8, num_denoising_steps=6, sampler="ancestral", seed=0, return_trajectory=True)
    released = generate(tiny_model, [[0, 4, 5]], RELEASE, canvas_length=40, **kw).trajectory
    ours = generate(tiny_model, [[0, 4, 5]], **kw).trajectory
    assert writes_by_region(released)["tail"] > 0 and writes_by_region(ours)["tail"] == 0
    page = trajectory_html(released, tiny_tokenizer)
    writes = writes_by_region(released)
    assert f"wrote {writes['answer']} tokens into the answer and {writes['tail']} into the 27-position tail" in page
    assert '"tail_start": 13' in page and len(released.frames[0].canvas[0]) == 40
    gif = write_trajectory_gif(tmp_path / "t.gif", released, tiny_tokenizer)
    assert gif.read_bytes()[:6] == b"GIF89a"


def test_default_generate_leaves_no_initial_noise_in_the_returned_span(tiny_model):
    """Every returned position was written by some step: none is left over from the random starting canvas."""
    committed = []
    out = generate(tiny_model, [[0, 4, 5], [0, 9, 10, 11, 12]], max_new_tokens=24, seed=4, trim_at_eos=False,
                   callback=lambda info: committed.append(info.committed.clone()))
    touched = torch.stack(committed).any(0)
    for b, (p, budget) in enumerate(zip(out.prompt_lengths, out.budgets)):
        assert bool(touched[b, p:p + budget].all())
