"""Sample-quality metrics (sumi.eval.quality) against hand-computed values and real judges."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sumi.errors import ConfigError
from sumi.eval.quality import (
    Judge,
    distinct_n,
    load_judge,
    mean_se,
    measure,
    noise_share,
    summarize,
    unigram_entropy,
)


def test_unigram_entropy_hand_values():
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert unigram_entropy([5, 5, 5]) == 0.0
    assert unigram_entropy([7, 7, 7, 9]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert unigram_entropy([]) == 0.0


def test_distinct_n_and_noise_share_hand_values():
    ids = [1, 2, 1, 2, 1]
    assert distinct_n(ids, 1) == pytest.approx(2 / 5)
    assert distinct_n(ids, 2) == pytest.approx(2 / 4)  # (1,2) (2,1) (1,2) (2,1)
    assert distinct_n(ids, 3) == pytest.approx(2 / 3)  # (1,2,1) (2,1,2) (1,2,1)
    assert distinct_n([3], 2) is None
    assert noise_share([4, 5, 6, 7], [4, 0, 6, 0]) == 0.5
    assert noise_share([], []) is None


def test_mean_se_and_summary_gen_ppl():
    mean, se, n = mean_se([1.0, 2.0, 3.0, None])
    assert (mean, n) == (2.0, 3) and se == pytest.approx(1.0 / math.sqrt(3))
    records = measure(["", ""], ["x", "y"], [[1, 1], [1, 2]], judge=None)
    for record, nll in zip(records, (1.0, 3.0)):
        record.judge_nll, record.judge_tokens = nll, 1
    summary = summarize(records, nfe=12, wall_s=0.5)
    assert summary.judge_nll == 2.0 and summary.judge_nll_se == pytest.approx(1.0)
    assert summary.gen_ppl == pytest.approx(math.exp(2.0))
    assert summary.gen_ppl_se == pytest.approx(math.exp(2.0) * 1.0)
    assert summary.entropy == pytest.approx(math.log(2) / 2)
    assert summary.distinct[1][0] == pytest.approx((0.5 + 1.0) / 2)
    json.dumps(summary.to_json())


class BigramJudge(torch.nn.Module):
    """Logits depend only on the previous token: logits[b, i] = table[ids[b, i]] (known, set by hand)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def _letters(text: str) -> list[int]:
    return [ord(c) - ord("a") for c in text]


def test_judge_nll_known_logits_and_padding():
    # 4 letters a..d plus BOS = 4; after "b" the judge says a: 1/2, b: 1/4, c: 1/8, d: 1/8.
    table = torch.zeros(5, 5)
    table[1] = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125, 1e-30]))
    table[4] = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25, 1e-30]))  # after BOS: uniform over letters
    judge = Judge(BigramJudge(table), _letters, bos_id=4, max_length=64, batch_size=1)
    # prompt "ab" is context; text "ba": b after b (1/4), a after b (1/2) → −ln(1/8) = 3 ln 2
    [(total, count)] = judge.nll(["ab"], ["ba"])
    assert count == 2 and total == pytest.approx(3 * math.log(2), abs=1e-6)
    # no prompt: the first text token is read after BOS (1/4)
    [(total, count)] = judge.nll([""], ["bc"])
    assert count == 2 and total == pytest.approx(math.log(4) + math.log(8), abs=1e-6)
    # batching with right padding gives the same numbers
    prompts, texts = ["ab", "", "abcd"], ["ba", "bc", "bbbbb"]
    one = [judge.nll([p], [t])[0] for p, t in zip(prompts, texts)]
    judge.batch_size = 3
    for (a, n), (b, m) in zip(one, judge.nll(prompts, texts)):
        assert n == m and a == pytest.approx(b, abs=1e-5)
    # an empty text scores nothing; a text past max_length is cut
    assert judge.nll(["a"], [""]) == [(0.0, 0)]
    judge.max_length = 4
    assert judge.nll(["ab"], ["bbbb"])[0][1] == 1


def test_sumi_causal_judge_matches_its_training_loss(tmp_path, tiny_tokenizer):
    from sumi.config import sumi_tiny
    from sumi.release import Sumi

    causal = Sumi.from_config(sumi_tiny().replace(is_causal=True), seed=0)
    causal.save_pretrained(tmp_path / "judge")
    tiny_tokenizer.save_pretrained(tmp_path / "judge")
    judge = load_judge(tmp_path / "judge")
    prompt, text = "In the beginning", " God created the heaven"
    [(total, count)] = judge.nll([prompt], [text])
    context = [tiny_tokenizer.bos_token_id] + tiny_tokenizer.encode(prompt)
    target = tiny_tokenizer.encode(text)
    ids = torch.tensor([context + target])
    labels = ids.clone()
    labels[0, :len(context)] = -100
    with torch.no_grad():
        loss = causal.eval()(ids, labels=labels).loss  # the AR baseline's own mean next-token CE
    assert count == len(target)
    assert total / count == pytest.approx(float(loss), rel=1e-5)


def test_diffusion_model_is_refused_as_judge(tiny_model_dir):
    with pytest.raises(ConfigError, match="must be causal"):
        load_judge(tiny_model_dir)


def test_hf_causal_lm_judge_matches_transformers_loss(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")

    directory = tmp_path / "gpt2-tiny"
    tiny_tokenizer.save_pretrained(directory)  # loads as a PreTrainedTokenizerFast
    hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
    config = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    judge = load_judge(directory, batch_size=2)
    prompts, texts = ["And God said", "Let there"], [", Let there be light", " be"]
    results = judge.nll(prompts, texts)
    for prompt, text, (total, count) in zip(prompts, texts, results):
        context = [hf_tok.bos_token_id] + hf_tok(prompt, add_special_tokens=False).input_ids
        target = hf_tok(text, add_special_tokens=False).input_ids
        ids = torch.tensor([context + target])
        labels = ids.clone()
        labels[0, :len(context)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss  # transformers' own shifted mean CE
        assert count == len(target)
        assert total / count == pytest.approx(float(loss), rel=1e-5)


@pytest.fixture(scope="module")
def causal_judge_dir(tmp_path_factory, tiny_tokenizer):
    from sumi.config import sumi_tiny
    from sumi.release import Sumi

    directory = tmp_path_factory.mktemp("causal_judge")
    Sumi.from_config(sumi_tiny().replace(is_causal=True), seed=1).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def test_pareto_front_of_constructed_points():
    from sumi.eval.sweep import SweepPoint, pareto_front

    def point(nfe, ppl):
        records = measure([""], ["x"], [[1]], judge=None)
        summary = summarize(records)
        summary.gen_ppl = ppl
        return SweepPoint(label=f"{nfe}/{ppl}", options={}, summary=summary, nfe_per_sample=nfe)

    points = [point(64, 30.0), point(16, 50.0), point(32, 60.0), point(128, 29.0), point(8, 90.0), point(64, 35.0)]
    assert pareto_front(points) == [4, 1, 0, 3]  # (32, 60) is beaten by (16, 50); (64, 35) by (64, 30)
    points[1].summary.entropy = -1.0  # (16, 50) repeats itself: below the floor it leaves the front
    assert pareto_front(points, entropy_floor=0.0) == [4, 2, 0, 3]


def test_sweep_on_tiny_model_writes_json_and_png(tmp_path, tiny_model, tiny_tokenizer, causal_judge_dir):
    from sumi.eval.sweep import plot_sweep, run_sweep, write_sweep

    judge = load_judge(causal_judge_dir)
    prompts = ["In the beginning", "And God said", "Let there be", "And the earth"]
    grid = [{"sampler": "ancestral", "num_denoising_steps": 8, "temperature": 1.0, "preset": "release"},
            {"sampler": "adaptive", "num_denoising_steps": 16, "temperature": 0.0},
            {"sampler": "greedy", "num_denoising_steps": 4},
            {"sampler": "psi", "num_denoising_steps": 8, "greedy_tail": True},
            {"sampler": "threshold", "num_denoising_steps": 8, "tokens_per_step": 2}]
    points = run_sweep(tiny_model, tiny_tokenizer, prompts, judge, grid, base={"max_new_tokens": 16},
                       batch_size=2, seed=0)
    assert [p.options["sampler"] for p in points] == ["ancestral", "adaptive", "greedy", "psi", "threshold"]
    assert points[0].label == "ancestral (release) K=8 T=1.0"
    for point, steps in zip(points, (8, 16, 4, 8, 8)):
        assert 1 <= point.nfe_per_sample <= steps
        assert point.summary.samples == 4 and point.summary.gen_ppl > 1
    assert points[0].summary.noise_share is not None and points[3].summary.noise_share is not None
    doc = json.loads(write_sweep(tmp_path / "sweep.json", points).read_text())
    assert len(doc["points"]) == 5 and any(p["pareto"] for p in doc["points"])
    png = plot_sweep(points, tmp_path / "sweep.png", reference=points[0], entropy_floor=1.0,
                     anchors={"held-out text": 50.0, "uniform random ids": 900.0},
                     title="a title long enough to need wrapping " * 4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same seeds give the same numbers
    again = run_sweep(tiny_model, tiny_tokenizer, prompts, judge, grid[:1], base={"max_new_tokens": 16},
                      batch_size=2, seed=0)
    assert again[0].summary.gen_ppl == points[0].summary.gen_ppl


@pytest.mark.slow
def test_eval_samples_cli_scores_a_jsonl_file(tmp_path, causal_judge_dir, tiny_model_dir):
    import subprocess
    import sys

    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"prompt": "In the beginning", "text": " God created"}\n{"text": "And God said"}\n')
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "sumi.cli", "eval-samples", "--judge", str(causal_judge_dir),
                           "--samples", str(samples), "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 2 and summary["gen_ppl"] > 1
    assert len(json.loads(out.read_text())["samples"]) == 2
    # a diffusion model as judge: one line, exit 2
    bad = subprocess.run([sys.executable, "-m", "sumi.cli", "eval-samples", "--judge", str(tiny_model_dir),
                          "--samples", str(samples)], capture_output=True, text=True)
    assert bad.returncode == 2 and "must be causal" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    done = subprocess.run([sys.executable, "-m", "sumi.cli", "eval-samples", "--judge", str(causal_judge_dir),
                           "--model", str(tiny_model_dir), "--prompt", "In the", "--prompt", "And God",
                           "--max-new-tokens", "8", "--steps", "4", "--sampler", "ancestral"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["nfe"] <= 4
