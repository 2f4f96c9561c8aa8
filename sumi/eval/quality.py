"""Sample quality: the numbers masked/uniform diffusion papers (MDLM, UDLM, Duo) report, per sample and summarised.

Per sample (the new text a sampler returned for one prompt):

* **judge NLL** (nats/token): mean negative log-likelihood of the text under a *judge* causal LM, which re-tokenises
  the decoded text with its own tokenizer and reads it after ``BOS + prompt`` (the prompt is context, not scored).
  The judge is any Hugging Face ``AutoModelForCausalLM`` directory or a sumi AR baseline (``model.causal=true``).
* **unigram entropy** (nats) of the sample's token ids (the sampler's tokenizer): low = repetition, which generative
  perplexity alone rewards;
* **distinct-n**: unique n-grams / n-grams of the sample (n = 1, 2, 3);
* **noise share**: the fraction of returned tokens still equal to the initial random canvas at their position
  (untouched prior noise; a token redrawn to its starting value counts too, probability 1/V each).

Summary over samples: the mean and its standard error (sample std / √n) of each, and the generative perplexity
``gen_ppl = exp(mean judge NLL)`` with the delta-method s.e. ``gen_ppl · s.e.(NLL)``. The mean is over samples
(each sample one unit), not tokens, so the s.e. is over independent draws. Samples the judge sees no token of
(empty text) are counted (``empty``) and left out of the NLL. NFE (forward calls) and wall time are per run.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sumi.errors import CheckpointError, ConfigError, InputError

DISTINCT_NS = (1, 2, 3)


# ----------------------------------------------------------------------------------------------- text statistics
def unigram_entropy(ids: Sequence[int]) -> float:
    """−Σ_v p(v) log p(v) (nats) of the empirical token distribution of ``ids``; 0 for an empty sample."""
    if not ids:
        return 0.0
    n = len(ids)
    return -sum(c / n * math.log(c / n) for c in Counter(ids).values())


def distinct_n(ids: Sequence[int], n: int) -> float | None:
    """Unique n-grams / n-grams of ``ids``; None when the sample is shorter than n."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def noise_share(ids: Sequence[int], initial: Sequence[int]) -> float | None:
    """Fraction of positions where ``ids`` still equals the initial canvas ``initial`` (same positions)."""
    if not ids:
        return None
    return sum(a == b for a, b in zip(ids, initial)) / len(ids)


def mean_se(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, standard error of the mean, count) over the values that are not None; s.e. 0 for one value."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return float("nan"), float("nan"), 0
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0, len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs)), len(xs)


# ----------------------------------------------------------------------------------------------- the judge
class Judge:
    """A causal LM that scores text: ``logits_fn(ids [B, L]) -> logits [B, L, V]``, position i predicting i + 1.

    Args:
        logits_fn: the model's forward (any module returning a tensor or an object with ``.logits``).
        encode: text → the judge's token ids (no special tokens).
        bos_id: prepended to every sequence (so the first text token is scored), or None.
        max_length: the judge's context; longer sequences are cut on the right (fewer tokens scored).
        batch_size: sequences per forward.
    """

    def __init__(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], encode: Callable[[str], list[int]], *,
                 bos_id: int | None, max_length: int, pad_id: int = 0, batch_size: int = 16,
                 device: torch.device | str = "cpu") -> None:
        self.logits_fn, self.encode, self.bos_id = logits_fn, encode, bos_id
        self.max_length, self.pad_id, self.batch_size, self.device = max_length, pad_id, batch_size, device

    @torch.inference_mode()
    def nll(self, prompts: Sequence[str], texts: Sequence[str]) -> list[tuple[float, int]]:
        """Per sample (summed NLL in nats of the text's judge tokens given BOS + prompt, number scored)."""
        if len(prompts) != len(texts):
            raise InputError(f"{len(prompts)} prompts but {len(texts)} texts")
        rows = []
        for prompt, text in zip(prompts, texts):
            context = ([] if self.bos_id is None else [self.bos_id]) + (self.encode(prompt) if prompt else [])
            target = self.encode(text) if text else []
            ids = (context + target)[: self.max_length]
            rows.append((ids, max(len(context), 1)))  # the first scored position needs one token before it
        out = []
        for lo in range(0, len(rows), self.batch_size):
            chunk = rows[lo:lo + self.batch_size]
            width = max(len(ids) for ids, _ in chunk)
            batch = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            for i, (ids, _) in enumerate(chunk):
                batch[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logits = self.logits_fn(batch.to(self.device))
            logits = getattr(logits, "logits", logits).float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            token_lp = log_probs.gather(-1, batch[:, 1:, None].to(log_probs.device)).squeeze(-1).cpu()
            for i, (ids, start) in enumerate(chunk):
                # right padding never enters a scored row: each row attends causally to its own prefix only
                scored = token_lp[i, start - 1:len(ids) - 1]
                out.append((float(-scored.double().sum()), int(scored.numel())))
        return out


def load_judge(path: str | Path, *, device: torch.device | str = "cpu", batch_size: int = 16) -> Judge:
    """A judge from a directory: a sumi AR baseline (``is_causal`` in config.json) or any Hugging Face
    ``AutoModelForCausalLM`` directory with its tokenizer. A sumi *diffusion* model is refused (it is not causal)."""
    directory = Path(path)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"judge {directory} has no config.json: pass a sumi AR model directory "
                              "(trained with model.causal=true) or a Hugging Face causal LM directory")
    config = json.loads(config_path.read_text())
    if config.get("model_type", "").startswith("sumi") or "is_causal" in config or \
            config.get("architectures", [""])[0].startswith("Sumi"):
        if not config.get("is_causal", False):
            raise ConfigError(f"judge {directory} is a sumi diffusion model; a judge must be causal: train one "
                              "with `sumi train ... model.causal=true` or pass a Hugging Face causal LM")
        from sumi.checkpoint import resolve_model

        model, tok = resolve_model(str(directory), device=device)
        model.eval()
        return Judge(lambda ids: model(ids, validate=False).logits, lambda text: tok.encode(text),
                     bos_id=tok.bos_token_id, pad_id=tok.pad_token_id, max_length=model.config.max_position_embeddings,
                     batch_size=batch_size, device=device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).to(device).eval()
    max_length = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (bos or 0)
    return Judge(lambda ids: model(input_ids=ids).logits, lambda text: tok(text, add_special_tokens=False).input_ids,
                 bos_id=bos, pad_id=pad, max_length=int(max_length), batch_size=batch_size, device=device)


# ----------------------------------------------------------------------------------------------- records
@dataclass
class SampleQuality:
    """The metrics of one sample."""

    prompt: str
    text: str
    ids: list[int]
    judge_nll: float | None
    """Mean judge NLL of the text's tokens (nats/token); None when the judge scored no token."""
    judge_tokens: int
    entropy: float
    """Unigram entropy of ``ids`` (nats)."""
    distinct: dict[int, float | None]
    noise_share: float | None
    """Share of returned tokens still equal to the initial random canvas (None: unknown or empty)."""


@dataclass
class QualitySummary:
    """Means ± standard errors over samples, and the run's cost."""

    samples: int
    empty: int
    gen_ppl: float
    gen_ppl_se: float
    judge_nll: float
    judge_nll_se: float
    entropy: float
    entropy_se: float
    distinct: dict[int, tuple[float, float]]
    noise_share: float | None
    noise_share_se: float | None
    nfe: int | None = None
    """Forward calls of the sampler for the whole run (all batches)."""
    wall_s: float | None = None
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["distinct"] = {str(n): {"mean": m, "se": s} for n, (m, s) in self.distinct.items()}
        return out


def measure(prompts: Sequence[str], texts: Sequence[str], ids: Sequence[Sequence[int]], judge: Judge | None, *,
            initial: Sequence[Sequence[int]] | None = None) -> list[SampleQuality]:
    """Per-sample metrics. ``ids`` are the returned token ids (sampler tokenizer); ``initial`` the initial canvas
    at the same positions (for the noise share)."""
    scores = judge.nll(prompts, texts) if judge is not None else [(0.0, 0)] * len(texts)
    out = []
    for i, (prompt, text, row) in enumerate(zip(prompts, texts, ids)):
        row = list(row)
        total, count = scores[i]
        out.append(SampleQuality(
            prompt=prompt, text=text, ids=row, judge_nll=total / count if count else None, judge_tokens=count,
            entropy=unigram_entropy(row), distinct={n: distinct_n(row, n) for n in DISTINCT_NS},
            noise_share=None if initial is None else noise_share(row, list(initial[i])),
        ))
    return out


def summarize(records: Sequence[SampleQuality], *, nfe: int | None = None, wall_s: float | None = None,
              settings: dict | None = None) -> QualitySummary:
    nll, nll_se, _ = mean_se([r.judge_nll for r in records])
    ent, ent_se, _ = mean_se([r.entropy for r in records])
    noise, noise_se, n_noise = mean_se([r.noise_share for r in records])
    distinct = {n: mean_se([r.distinct[n] for r in records])[:2] for n in DISTINCT_NS}
    ppl = math.exp(nll) if nll == nll else float("nan")
    return QualitySummary(
        samples=len(records), empty=sum(r.judge_tokens == 0 for r in records), gen_ppl=ppl, gen_ppl_se=ppl * nll_se,
        judge_nll=nll, judge_nll_se=nll_se, entropy=ent, entropy_se=ent_se, distinct=distinct,
        noise_share=noise if n_noise else None, noise_share_se=noise_se if n_noise else None, nfe=nfe,
        wall_s=wall_s, settings=dict(settings or {}),
    )


def sample_quality(model: torch.nn.Module, tokenizer, prompts: Sequence[str], judge: Judge | None, *,
                   batch_size: int = 32, seed: int = 0, config=None,
                   **overrides) -> tuple[list[SampleQuality], QualitySummary]:
    """Sample one continuation per prompt with :func:`sumi.sampling.generate` and measure it.

    Prompts are encoded with BOS (the release convention); batches of ``batch_size`` rows use seeds
    ``seed, seed + 1, …``. ``config`` (a :class:`~sumi.sampling.config.SamplingConfig`, default sumi's defaults)
    with ``overrides`` (sampler, steps, temperature, …) are the sampling options.
    """
    from sumi.sampling import generate
    from sumi.sampling.config import sampling_config

    if not prompts:
        raise InputError("no prompts to sample from")
    options = sampling_config(config, **overrides)
    records: list[SampleQuality] = []
    nfe, wall = 0, 0.0
    for index, lo in enumerate(range(0, len(prompts), batch_size)):
        chunk = list(prompts[lo:lo + batch_size])
        ids = [tokenizer.encode(p, add_bos=True) for p in chunk]
        start = time.perf_counter()
        out = generate(model, ids, options.replace(seed=seed + index))
        wall += time.perf_counter() - start
        nfe += out.nfe
        texts = [tokenizer.decode(seq, skip_special_tokens=True) for seq in out.sequences]
        initial = getattr(out, "initial_canvas", None)
        init_rows = None
        if initial is not None:
            init_rows = [initial[b, p:p + len(seq)].tolist()
                         for b, (p, seq) in enumerate(zip(out.prompt_lengths, out.sequences))]
        records += measure(chunk, texts, out.sequences, judge, initial=init_rows)
    settings = {k: v for k, v in options.to_dict().items() if k not in ("frozen", "seed")}
    return records, summarize(records, nfe=nfe, wall_s=wall, settings=settings)


def write_report(path: str | Path, records: Sequence[SampleQuality], summary: QualitySummary) -> Path:
    """One JSON file: ``{"summary": …, "samples": [...]}`` (written aside and renamed)."""
    from sumi._io import atomic_write_text

    doc = {"summary": summary.to_json(),
           "samples": [{**asdict(r), "distinct": {str(n): v for n, v in r.distinct.items()}} for r in records]}
    atomic_write_text(Path(path), json.dumps(doc, indent=1) + "\n")
    return Path(path)
