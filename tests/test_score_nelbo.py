"""NELBO scoring: estimator against brute force and exact integrals, prompt handling, determinism, bad input."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sumi.diffusion import gidd_terms, uniform  # noqa: E402
from sumi.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from sumi.eval.nelbo import (  # noqa: E402
    EncodedPair,
    EncodeOptions,
    NelboConfig,
    encode_pair,
    fit_canvas,
    nelbo_of_ids,
    rolling_windows,
    score,
)
from sumi.model import SumiOutput  # noqa: E402

TEXT = "And God said, Let there be light: and there was light."


def expected_uniform_integrand(vocab: int, alpha: torch.Tensor) -> torch.Tensor:
    """E_z[E_tok(α)] per token for a uniform x̂ over ``vocab`` ids, exactly (fp64), shape of ``alpha``."""
    logits = torch.zeros(alpha.numel(), 2, vocab, dtype=torch.float64)
    x = torch.zeros(alpha.numel(), 2, dtype=torch.long)
    z = torch.tensor([0, 1]).expand(alpha.numel(), 2)  # z = x, and one z ≠ x (all others are symmetric)
    a = alpha.reshape(-1, 1).double()
    terms = gidd_terms(logits, x, z, a, torch.log(a) - torch.log1p(-a), uniform(vocab))
    p_keep = (a + (1 - a) / vocab)[:, 0]
    return (p_keep * terms.elbo[:, 0] + (1 - p_keep) * terms.elbo[:, 1]).reshape(alpha.shape)


def truncated_integral(vocab: int, points: int = 4000) -> float:
    """∫_{−9}^{9} E_z[w·(KL+IS)] dλ for a uniform x̂ (midpoint rule in λ, where the integrand is smooth)."""
    lam = -9 + (torch.arange(points, dtype=torch.float64) + 0.5) * (18 / points)
    alpha = torch.sigmoid(lam)
    return float((expected_uniform_integrand(vocab, alpha) * alpha * (1 - alpha)).sum() * (18 / points))


def test_truncated_integral_matches_spec_worked_number():
    # docs/design.md §2.4: uniform x̂, N = 4, λ ∈ [−9, 9] → 1.385241 (the full integral is log 4).
    assert truncated_integral(4) == pytest.approx(1.385241, abs=2e-6)


@pytest.fixture
def uniform_model(tiny_model):
    with torch.no_grad():
        tiny_model.lm_head.weight.zero_()  # logits ≡ 0 → x̂ uniform over the 512 ids
    return tiny_model


def test_uniform_logits_score_log_v(uniform_model, tiny_tokenizer):
    vocab = uniform_model.config.vocab_size
    config = NelboConfig(num_timesteps=16, num_draws=2, canvas_length=208, batch_size=32)
    ids = list(range(3, 3 + 200))
    (res,) = nelbo_of_ids(uniform_model, [([0], ids)], config)
    lo, hi = config.alpha_range()
    exact_grid = (hi - lo) * expected_uniform_integrand(vocab, config.alpha_grid()).mean().item()
    exact = truncated_integral(vocab)
    # The estimator is unbiased for the K-point grid value; the grid approximates the truncated integral,
    # which is log V minus the mass outside λ ∈ [−9, 9].
    assert abs(res.total_nats / 200 - exact_grid) < 4 * res.total_stderr / 200
    lo, hi = NelboConfig().alpha_range()
    default_grid = (hi - lo) * expected_uniform_integrand(vocab, NelboConfig().alpha_grid()).mean().item()
    assert default_grid == pytest.approx(exact, abs=2e-3)  # K = 128 midpoints in α: bias ≈ 1.4e-3 nats/token
    assert 0 < math.log(vocab) - exact < 5e-3
    # Through the public API: nats/token near log V, and the error bars cover it.
    r = score(uniform_model, tiny_tokenizer, TEXT * 3, num_timesteps=16, num_draws=2, canvas_length=64)
    assert abs(r.nelbo - exact_grid) < 4 * r.stderr
    assert r.perplexity_bound == pytest.approx(math.exp(r.nelbo))


def test_mean_over_seeds_matches_brute_force(tiny_model):
    config = dict(num_timesteps=16, canvas_length=32, batch_size=256)
    request = [([0, 40, 41], list(range(50, 70)))]
    runs = [nelbo_of_ids(tiny_model, request, NelboConfig(seed=s, **config))[0] for s in range(8)]
    brute = nelbo_of_ids(tiny_model, request, NelboConfig(seed=999, num_draws=32, **config))[0]
    mean = sum(r.total_nats for r in runs) / len(runs)
    se_mean = math.sqrt(sum(r.total_stderr ** 2 for r in runs)) / len(runs)
    assert abs(mean - brute.total_nats) < 3 * math.hypot(se_mean, brute.total_stderr)
    # The reported error is an honest (conservative for D = 1) scale of the seed-to-seed spread.
    spread = torch.tensor([r.total_nats for r in runs]).std().item()
    assert spread < 2 * (se_mean * math.sqrt(len(runs)))
    assert brute.total_stderr < runs[0].total_stderr


def test_grid_estimate_matches_training_loss_elbo_metric(tiny_model):
    """Cross-implementation brute force: the trainer's ELBO metric (t ~ U[t_min, t_max], one z per draw,
    ``SumiForMaskGeneration.forward(labels=, t=)``) averaged over many draws, times Δ = α_max − α_min."""
    from sumi.diffusion import time_range, uniform

    target = list(range(50, 70))
    config = NelboConfig(num_timesteps=16, num_draws=4, canvas_length=len(target), batch_size=64)
    (grid,) = nelbo_of_ids(tiny_model, [([], target)], config)
    gen = torch.Generator().manual_seed(5)
    t_min, t_max = time_range()
    n = 512
    t = t_min + (t_max - t_min) * torch.rand(n, generator=gen)
    x = torch.tensor(target)[None].expand(n, -1)
    z = uniform(512).sample_zt(x, (1 - t)[:, None], generator=gen)
    with torch.no_grad():
        logits = tiny_model(z).logits
    from sumi.diffusion import sumi_loss

    chunks = 32  # the metric is a mean over a batch: batch means of n/chunks draws give the standard error
    means = torch.stack([sumi_loss(lg, zz, xx, tt)[1]["elbo"] for lg, zz, xx, tt in
                         zip(logits.chunk(chunks), z.chunk(chunks), x.chunk(chunks), t.chunk(chunks))])
    means = means.double() * len(target)
    lo, hi = config.alpha_range()
    brute, brute_se = (hi - lo) * means.mean().item(), (hi - lo) * means.std().item() / math.sqrt(chunks)
    assert abs(grid.total_nats - brute) < 3 * math.hypot(grid.total_stderr, brute_se)


class NanOutsideScoredSpan(torch.nn.Module):
    """Wraps a model: full forward (the slow path), NaN logits outside [start, end), records canvases."""

    def __init__(self, model, start: int, end: int) -> None:
        super().__init__()
        self.inner, self.config, self.start, self.end = model, model.config, start, end
        self.canvases: list[torch.Tensor] = []

    def forward(self, input_ids):
        self.canvases.append(input_ids.clone())
        logits = self.inner(input_ids).logits.clone()
        logits[:, :self.start] = float("nan")
        logits[:, self.end:] = float("nan")
        return SumiOutput(logits=logits)


def test_prompt_is_clean_and_never_scored(tiny_model, monkeypatch):
    import sumi.eval.nelbo as nelbo

    prompt, target = [0, 17, 18, 19, 20], [30, 31, 32, 33]
    config = NelboConfig(num_timesteps=8, num_draws=2, canvas_length=40, batch_size=5)
    (fast,) = nelbo_of_ids(tiny_model, [(prompt, target)], config)
    monkeypatch.setattr(nelbo, "LOGITS_BUDGET", 2 * 4 * 512)  # the V-sized math in slices of 2 rows
    assert nelbo_of_ids(tiny_model, [(prompt, target)], config)[0].total_nats == pytest.approx(fast.total_nats)
    spy = NanOutsideScoredSpan(tiny_model, len(prompt), len(prompt) + len(target))
    (slow,) = nelbo_of_ids(spy, [(prompt, target)], config)
    # NaN logits at the prompt and tail would poison the sum if those positions were scored; the gathered
    # fast path equals the full-forward slow path.
    assert math.isfinite(slow.total_nats) and slow.num_tokens == len(target)
    assert slow.total_nats == pytest.approx(fast.total_nats, rel=1e-5)
    canvases = torch.cat(spy.canvases)
    assert canvases.shape == (16, 40)
    assert (canvases[:, :len(prompt)] == torch.tensor(prompt)).all()
    # The prompt shapes the score through attention only.
    (other,) = nelbo_of_ids(tiny_model, [([0, 99, 98, 97, 96], target)], config)
    assert other.num_tokens == fast.num_tokens and other.total_nats != fast.total_nats


def test_conditional_score_counts_only_continuation(tiny_model, tiny_tokenizer):
    cont = " and there was light."
    r = score(tiny_model, tiny_tokenizer, "And God said, Let there be light:", continuation=cont,
              num_timesteps=8, canvas_length=64)
    assert r.num_tokens == len(tiny_tokenizer.encode(cont)) + 1  # + the scored EOS
    assert r.prompt_tokens == 1 + len(tiny_tokenizer.encode("And God said, Let there be light:"))
    assert r.num_bytes == len(cont.encode())
    assert r.bits_per_byte == pytest.approx(r.total_nats / (r.num_bytes * math.log(2)))
    no_eos = score(tiny_model, tiny_tokenizer, "And God said,", continuation=cont, num_timesteps=8,
                   canvas_length=64, add_eos=False)
    assert no_eos.num_tokens == len(tiny_tokenizer.encode(cont))


def test_deterministic_and_independent_of_batching(tiny_model, tiny_tokenizer):
    kw = dict(num_timesteps=8, canvas_length=64)
    a = score(tiny_model, tiny_tokenizer, TEXT, **kw)
    assert score(tiny_model, tiny_tokenizer, TEXT, **kw) == a
    both = score(tiny_model, tiny_tokenizer, ["In the beginning", TEXT], batch_size=3, **kw)
    assert both[1].total_nats == pytest.approx(a.total_nats, rel=1e-5)
    assert score(tiny_model, tiny_tokenizer, TEXT, seed=1, **kw).total_nats != a.total_nats
    heuristic = score(tiny_model, tiny_tokenizer, TEXT, effective_snr=True, **kw)
    assert math.isfinite(heuristic.nelbo) and heuristic.nelbo != a.nelbo and heuristic.num_tokens == a.num_tokens


def test_encoding_options(tiny_tokenizer):
    tok = tiny_tokenizer
    sep = encode_pair(tok, "Let there be ", "light", EncodeOptions())
    assert sep.prompt == [tok.bos_token_id] + tok.encode("Let there be")
    assert sep.target == tok.encode(" light") + [tok.eos_token_id]  # trailing space moves to the continuation
    joint = encode_pair(tok, "Let there be", " light", EncodeOptions(tokenization="joint", add_eos=False))
    assert joint.prompt[1:] + joint.target == tok.encode("Let there be light")
    whole = encode_pair(tok, None, "light", EncodeOptions(add_bos=False, add_eos=False))
    assert whole == EncodedPair([], tok.encode("light"))


def test_truncation():
    pair = EncodedPair([0, 5, 6, 7, 8], [10, 11, 12])
    left = fit_canvas(pair, 6, "left", keep_first=1)
    assert left == EncodedPair([0, 7, 8], [10, 11, 12], truncated_prompt=2)
    right = fit_canvas(pair, 6, "right", keep_first=1)
    assert right == EncodedPair([0, 5, 6, 7, 8], [10], truncated_target=2)
    assert fit_canvas(pair, 8, "error") is pair
    with pytest.raises(InputError, match=r"needs 8 tokens \(prompt 5 \+ scored 3\) but the canvas holds 6"):
        fit_canvas(pair, 6, "error")
    with pytest.raises(InputError, match="fills the canvas"):
        fit_canvas(pair, 5, "right")


def test_rolling_windows_score_every_token_once():
    ids = list(range(100, 123))
    windows = rolling_windows(ids, 8, context=3, prefix=[0])
    assert [t for _, span in windows for t in span] == ids
    assert windows[0][0] == [0] and windows[1][0] == ids[4:7]
    assert all(len(p) + len(s) <= 8 for p, s in windows)


def test_bad_inputs(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(InputError, match="continuation is empty"):
        score(tiny_model, tiny_tokenizer, "prompt", continuation="")
    with pytest.raises(InputError, match="empty"):
        score(tiny_model, tiny_tokenizer, "")
    with pytest.raises(InputError, match="canvas holds 256"):
        score(tiny_model, tiny_tokenizer, TEXT * 40, num_timesteps=2)
    r = score(tiny_model, tiny_tokenizer, TEXT * 40, num_timesteps=2, truncation="right")
    assert r.num_tokens == 255 and r.truncated_tokens > 0
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="num_timesteps must be a positive integer"):
            score(tiny_model, tiny_tokenizer, TEXT, num_timesteps=bad)
    with pytest.raises(ConfigError, match="num_draws"):
        score(tiny_model, tiny_tokenizer, TEXT, num_draws=0)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a sumi model directory"):
        score(tmp_path, None, TEXT)
    with pytest.raises(InputError, match="2 prompts but 1 continuations"):
        score(tiny_model, tiny_tokenizer, ["a", "b"], continuation=["c"])


def test_score_cli(tiny_model_dir, tmp_path, capsys):
    from sumi.cli import main

    assert main(["score", "--model", str(tiny_model_dir), "--text", TEXT, "-K", "4", "--canvas-length", "64",
                 "--json", "--no-progress"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["text"] == TEXT
    assert row["num_tokens"] > 1 and row["nelbo"] > 0 and row["stderr"] > 0
    # --file --lines --json: JSON Lines, one object per line of the file, each naming the text it scored.
    lines = ["In the beginning God created the heaven and the earth.", "", "And the earth was without form."]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    assert main(["score", "--model", str(tiny_model_dir), "--file", str(tmp_path / "texts.txt"), "--lines", "-K",
                 "4", "--canvas-length", "64", "--json", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == [lines[0], lines[2]] and all(r["nelbo"] > 0 for r in rows)
    assert main(["score", "--model", str(tiny_model_dir), "--prompt", "Let there be", "--continuation", " light",
                 "-K", "4", "--canvas-length", "64", "--json", "--no-progress"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["prompt"], row["continuation"]) == ("Let there be", " light")
    assert main(["score", "--model", str(tiny_model_dir), "--prompt", "Let there be", "--continuation", " light",
                 "-K", "4", "--canvas-length", "64", "--no-progress"]) == 0
    assert "nats/token" in capsys.readouterr().out
    assert main(["score", "--model", str(tmp_path), "--text", "x"]) == 2
    assert "not a sumi model directory" in capsys.readouterr().err
    assert main(["score", "--model", str(tiny_model_dir), "--text", "x", "-K", "0"]) == 2
    assert "num_timesteps" in capsys.readouterr().err


def test_score_cli_on_shards(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    from conftest import sample_texts

    from sumi.cli import main
    from sumi.data import MixtureSpec, build_shards

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts()[:80]))
    spec = MixtureSpec.from_dict({"sources": [{"name": "kjv", "type": "jsonl", "path": str(docs)}]})
    build_shards(spec, tiny_tokenizer, tmp_path / "shards", seq_len=32, heldout_fraction=0.1, show_progress=False,
                 num_workers=1)
    assert main(["score", "--model", str(tiny_model_dir), "--shards", str(tmp_path / "shards"), "--max-canvases",
                 "2", "-K", "4", "--json", "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["canvases"] == 2 and row["num_tokens"] == 64 and row["split"] == "heldout"
    assert 0 < row["nelbo"] < 20 and row["stderr"] > 0
