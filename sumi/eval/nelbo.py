"""NELBO scoring: an upper bound on −log p(text) in nats per token (``docs/design.md`` §2.6, §5).

Notation (as in :mod:`sumi.diffusion`):
    λ      log-SNR in [λ_min, λ_max] = [−9, 9];  α = σ(λ);  p(λ) = α(1 − α), so dα = p(λ)·dλ
    E_tok  the NELBO integrand w_elbo·(KL + IS) of one token at one α (nats), ``GiddTerms.elbo``
    K      grid points over α;  D  noise draws per grid point

Estimator. Per token, NELBO = ∫_{λ_min}^{λ_max} E_z[w·(KL + IS)] dλ = ∫_{α_min}^{α_max} E_z[E_tok(α)] dα. We use
K strata of equal width Δ/K over [α_min, α_max] (Δ = α_max − α_min ≈ 0.99975), one deterministic point at each
stratum's midpoint, and D independent draws of the noisy canvas z at each point:

    total ≈ Δ · (1/(K·D)) · Σ_k Σ_d  Σ_{scored tokens} E_tok(α_k; z_{k,d}).

The GIDD reference code uses left end points of linspace(1e-4, 0.9999, K+1) and drops Δ; we
integrate the truncated range exactly (a uniform-logits model then scores the truncated ∫, a hair under log V).

Canvas (the paper's layout): ``[prompt | continuation | tail]`` of ``canvas_length`` ids (capped at the model's
max positions). The prompt (BOS plus the context) is kept clean and never scored; the continuation is noised at
α_k and scored; the tail is a fresh uniform draw (the prior at λ_min) per row and is not scored. Attention is the
model's full bidirectional attention over the whole canvas.

Monte-Carlo standard error: only the draws of z are random (the grid is fixed), so Var(total) = Δ²/K² · Σ_k
Var_k/D. With D ≥ 2, Var_k is the sample variance of the D draws at point k; with D = 1 adjacent strata are
paired ("collapsed strata"), Var ≈ (e_a − e_b)²/2 per point, which is conservative (it also counts how the
integrand changes between neighbouring α).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from sumi.checkpoint import resolve_model
from sumi.diffusion import alpha_from_log_snr, gidd_terms, log_snr_from_alpha, uniform
from sumi.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN
from sumi.errors import ConfigError, InputError
from sumi.model import takes_sampler_keywords

logger = logging.getLogger(__name__)

Tokenization = Literal["separate", "joint"]
Truncation = Literal["error", "left", "right"]
TOKENIZATIONS = ("separate", "joint")
TRUNCATIONS = ("error", "left", "right")
LOGITS_BUDGET = 2**27
"""Elements of one slice of gathered logits (512 MiB in fp32); the KL/IS math holds a few such tensors."""
ALPHA_EFF_EPS = 1e-4
"""The effective-SNR heuristic clamps the kept fraction to [ε, 1 − ε] before taking its logit."""


# ============================================================================================ options

MAX_COUNT = 1 << 20
"""Upper bound on K, D and the batch size: each is a tensor dimension, so 1e11 would try to allocate terabytes."""

@dataclass(frozen=True)
class NelboConfig:
    """How the NELBO integral is estimated (grid, draws, canvas, batching)."""

    num_timesteps: int = 128
    """K: stratified grid points over α (the paper uses 128)."""
    num_draws: int = 1
    """D: independent noisy canvases per grid point (D ≥ 2 gives a within-stratum standard error)."""
    canvas_length: int = 2048
    """Row length of the canvas (prompt | continuation | random tail); capped at the model's max positions."""
    batch_size: int = 32
    """Canvas rows per forward pass."""
    seed: int = 0
    """Base seed; each request's noise is seeded from (seed, its token ids), so results do not depend on batching
    or on the other requests."""
    effective_snr: bool = False
    """The reference's variance-reduction heuristic: weight each row by the λ of the fraction of continuation
    tokens that stayed clean instead of λ_k. Not an unbiased NELBO estimator; off by default."""
    min_log_snr: float = LOG_SNR_MIN
    max_log_snr: float = LOG_SNR_MAX

    def __post_init__(self) -> None:
        for name in ("num_timesteps", "num_draws", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_COUNT:
                raise ConfigError(f"{name}={value} exceeds {MAX_COUNT}; use a smaller value")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.canvas_length, int) or self.canvas_length < 2:
            raise ConfigError(f"canvas_length must be an integer >= 2, got {self.canvas_length!r}")
        if not self.min_log_snr < self.max_log_snr:
            raise ConfigError(f"min_log_snr={self.min_log_snr} must be < max_log_snr={self.max_log_snr}")

    def alpha_range(self) -> tuple[float, float]:
        lo = torch.sigmoid(torch.tensor(self.min_log_snr, dtype=torch.float64)).item()
        hi = torch.sigmoid(torch.tensor(self.max_log_snr, dtype=torch.float64)).item()
        return lo, hi

    def alpha_grid(self) -> torch.Tensor:
        """α_k at the midpoints of K equal strata of [α_min, α_max], shape [K] (fp64)."""
        lo, hi = self.alpha_range()
        k = torch.arange(self.num_timesteps, dtype=torch.float64)
        return lo + (k + 0.5) / self.num_timesteps * (hi - lo)


@dataclass(frozen=True)
class EncodeOptions:
    """How texts become (prompt ids, scored ids). Each choice the references differ on is a field."""

    add_bos: bool = True
    """Prefix BOS to the prompt (Sumi's tokenizer convention); BOS is clean and never scored."""
    add_eos: bool = True
    """Score the closing EOS after the continuation/text (the paper's lm-eval fork does)."""
    tokenization: Tokenization = "separate"
    """``separate``: encode prompt and continuation on their own (the paper's fork); ``joint``: encode
    prompt+continuation together and split after the prompt's tokens (lm-eval's HF convention)."""
    truncation: Truncation = "error"
    """Over-long inputs: ``error`` refuses with the numbers; ``left`` drops the oldest prompt tokens (after BOS),
    then the start of the continuation; ``right`` drops the end of the continuation."""

    def __post_init__(self) -> None:
        if self.tokenization not in TOKENIZATIONS:
            raise ConfigError(f"tokenization must be one of {TOKENIZATIONS}, got {self.tokenization!r}")
        if self.truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")


# ============================================================================================ results
@dataclass(frozen=True)
class TokenNelbo:
    """Raw estimate for one (prompt ids, scored ids) request."""

    total_nats: float
    """Estimated NELBO of the scored ids, summed over tokens (nats)."""
    total_stderr: float
    """Monte-Carlo standard error of ``total_nats`` (nan when K = D = 1)."""
    num_tokens: int
    per_timestep: tuple[float, ...]
    """Σ_tok E_tok at each grid point α_k, averaged over draws (nats; the integrand's profile over α)."""


@dataclass(frozen=True)
class ScoreResult:
    """The NELBO of one text (or continuation): an upper bound on its negative log-likelihood."""

    nelbo: float
    """Nats per scored token."""
    total_nats: float
    """Nats summed over the scored tokens (−log-likelihood bound of the whole span)."""
    stderr: float
    """Monte-Carlo standard error of ``nelbo`` (nats/token)."""
    total_stderr: float
    num_tokens: int
    """Scored tokens (the continuation, plus the closing EOS when ``add_eos``)."""
    num_bytes: int
    """UTF-8 bytes of the scored text."""
    bits_per_byte: float
    perplexity_bound: float
    """exp(nelbo): an upper bound on the per-token perplexity."""
    prompt_tokens: int
    truncated_tokens: int = 0
    """Tokens cut to fit the canvas (``truncation`` = left/right)."""
    num_timesteps: int = 0
    num_draws: int = 0
    per_timestep: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


# ============================================================================================ encoding
@dataclass(frozen=True)
class EncodedPair:
    prompt: list[int]
    target: list[int]
    truncated_prompt: int = 0
    truncated_target: int = 0

    @property
    def truncated(self) -> int:
        return self.truncated_prompt + self.truncated_target


def _split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace onto the continuation (BPE attaches spaces to the next word)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def encode_pair(tokenizer, context: str | None, continuation: str, options: EncodeOptions) -> EncodedPair:
    """Token ids of (prompt, scored span) before canvas fitting. ``context=None`` scores a whole text."""
    if not isinstance(continuation, str):
        raise InputError(f"the text to score must be a str, got {type(continuation).__name__}")
    bos = [tokenizer.bos_token_id] if options.add_bos else []
    eos = [tokenizer.eos_token_id] if options.add_eos else []
    if context is None:
        body = tokenizer.encode(continuation)
        if not body:
            raise InputError("the text to score is empty; give at least one character")
        return EncodedPair(bos, body + eos)
    if not isinstance(context, str):
        raise InputError(f"the prompt must be a str, got {type(context).__name__}")
    if not continuation:
        raise InputError("the continuation is empty: there is nothing to score (pass a non-empty continuation)")
    context, continuation = _split_trailing_space(context, continuation)
    if options.tokenization == "separate":
        prompt, target = tokenizer.encode(context), tokenizer.encode(continuation)
    else:
        whole, prompt = tokenizer.encode(context + continuation), tokenizer.encode(context)
        n = 0
        while n < min(len(whole), len(prompt)) and whole[n] == prompt[n]:
            n += 1  # a BPE merge across the boundary moves the split to the last shared token
        prompt, target = whole[:n], whole[n:]
    if not target:
        raise InputError(f"the continuation {continuation!r} encodes to no tokens of its own")
    return EncodedPair(bos + prompt, target + eos)


def fit_canvas(pair: EncodedPair, length: int, truncation: Truncation, *, keep_first: int = 0,
               what: str = "input") -> EncodedPair:
    """Make ``prompt + target`` fit ``length`` ids, or raise :class:`InputError` with the numbers.

    ``keep_first`` prompt ids (the BOS) are never dropped by left truncation.
    """
    p, c = len(pair.prompt), len(pair.target)
    excess = p + c - length
    if excess <= 0:
        return pair
    if truncation == "error":
        raise InputError(
            f"the {what} needs {p + c} tokens (prompt {p} + scored {c}) but the canvas holds {length}; "
            f"shorten it, raise canvas_length (up to the model's max positions), or pass truncation='left' "
            f"(drop the oldest prompt tokens) / 'right' (drop the end of the scored text)"
        )
    if truncation == "left":
        cut_p = min(excess, max(p - keep_first, 0))
        cut_c = excess - cut_p
        if cut_c >= c:
            raise InputError(f"the {what} cannot fit a canvas of {length} tokens even without its prompt")
        prompt = pair.prompt[:keep_first] + pair.prompt[keep_first + cut_p:]
        target = pair.target[cut_c:]
    else:
        if excess >= c:
            raise InputError(
                f"the prompt alone has {p} tokens and fills the canvas of {length}; nothing would be scored. "
                "Use truncation='left' or a shorter prompt"
            )
        cut_p, cut_c = 0, excess
        prompt, target = pair.prompt, pair.target[:c - excess]
    logger.warning("%s truncated to fit the %d-token canvas: dropped %d prompt token(s)%s and %d scored token(s)%s",
                   what, length, cut_p, " from the start" if cut_p else "", cut_c,
                   (" from the start" if truncation == "left" else " from the end") if cut_c else "")
    return EncodedPair(prompt, target, pair.truncated_prompt + cut_p, pair.truncated_target + cut_c)


def rolling_windows(ids: Sequence[int], length: int, *, context: int = 0,
                    prefix: Sequence[int] = ()) -> list[tuple[list[int], list[int]]]:
    """Split a long document into canvas-sized (prompt, scored) windows that score every id exactly once.

    The first window's prompt is ``prefix`` (e.g. [BOS]); every later window's prompt is the ``context`` ids
    just before its span (clean context, not scored). Each scored span has ``length − len(prompt)`` ids.
    """
    ids = list(ids)
    prefix = list(prefix)
    if not 0 <= context <= length - 2:
        raise ConfigError(f"rolling context must lie in [0, canvas_length − 2 = {length - 2}], got {context}")
    if len(prefix) >= length:
        raise ConfigError(f"prefix of {len(prefix)} ids leaves no room in a canvas of {length}")
    windows, start = [], 0
    while start < len(ids):
        prompt = prefix if start == 0 else ids[max(0, start - context):start]
        span = ids[start:start + length - len(prompt)]
        windows.append((prompt, span))
        start += len(span)
    return windows


# ============================================================================================ model helpers
def canvas_size(model, canvas_length: int) -> int:
    return min(canvas_length, int(model.config.max_position_embeddings))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def logits_at(model, canvas: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits [B, N, V] (fp32) at ``positions`` [B, N] of ``canvas`` [B, L] (positions may repeat).

    A model whose forward takes ``logits_at`` (:func:`sumi.model.takes_sampler_keywords`: sumi's model, or a
    wrapper passing keywords through) runs its head only on the distinct asked-for positions (the head over
    every canvas position dominates memory for a 100k vocabulary); other modules take the full forward.
    """
    vocab = model.config.vocab_size
    mask = torch.zeros(canvas.shape, dtype=torch.bool, device=canvas.device).scatter_(1, positions, True)
    out = model(canvas, logits_at=mask) if takes_sampler_keywords(model) else model(canvas)
    logits = getattr(out, "logits", out)
    if logits.dim() == 2:  # [n, V] at the mask's positions in row-major order: find each asked position's row
        flat_row = (mask.flatten().cumsum(0) - 1).view(mask.shape).gather(1, positions)
        return logits[flat_row][..., :vocab].float()
    index = positions[..., None]
    return logits.gather(1, index.expand(-1, -1, logits.shape[-1]))[..., :vocab].float()


def request_seed(seed: int, prompt: Sequence[int], target: Sequence[int]) -> int:
    """A 63-bit seed from (seed, prompt ids, scored ids): identical requests get identical noise."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((int(seed), list(prompt), list(target))).encode())
    return int.from_bytes(h.digest(), "little") >> 1


# ============================================================================================ estimator
class _Rows:
    """The K·D noisy canvases of one request, drawn from its own generator (row r = k·D + d)."""

    def __init__(self, prompt: list[int], target: list[int], length: int, config: NelboConfig, vocab: int) -> None:
        gen = torch.Generator().manual_seed(request_seed(config.seed, prompt, target))
        k, d = config.num_timesteps, config.num_draws
        mixing = uniform(vocab)
        alpha = config.alpha_grid().float().repeat_interleave(d)[:, None]  # [R,1]
        log_snr = log_snr_from_alpha(alpha, config.min_log_snr, config.max_log_snr)
        x = torch.tensor(target, dtype=torch.long)[None].expand(k * d, -1)
        z_t = mixing.sample_zt(x, alpha, log_snr, generator=gen)  # [R,C]
        tail_len = length - len(prompt) - len(target)
        tail = mixing.sample(torch.full((k * d, tail_len), config.min_log_snr), generator=gen)  # the prior
        prompt_ids = torch.tensor(prompt, dtype=torch.long)[None].expand(k * d, -1)
        self.canvas = torch.cat([prompt_ids, z_t, tail], dim=1)  # [R,L]
        self.alpha, self.log_snr = alpha[:, 0], log_snr[:, 0]
        self.start, self.target = len(prompt), torch.tensor(target, dtype=torch.long)


def _summarise(e: torch.Tensor, config: NelboConfig, num_tokens: int) -> TokenNelbo:
    """e [K, D] fp64: Σ_tok E_tok per grid point and draw → total and its standard error."""
    k, d = e.shape
    lo, hi = config.alpha_range()
    width = hi - lo
    total = width * e.mean().item()
    if d >= 2:
        var = (e.var(dim=1, unbiased=True) / d).sum().item()
    elif k >= 2:
        diffs = e[1::2, 0] - e[0:k - 1:2, 0]  # pairs (0,1), (2,3), …
        var = diffs.pow(2).sum().item()
        if k % 2:
            var += 0.5 * (e[-1, 0] - e[-2, 0]).pow(2).item()  # the odd last point, paired with its neighbour
    else:
        var = math.nan
    stderr = width / k * math.sqrt(var) if not math.isnan(var) else math.nan
    return TokenNelbo(total, stderr, num_tokens, tuple((width * e.mean(dim=1)).tolist()))


@torch.inference_mode()
def nelbo_of_ids(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], config: NelboConfig | None = None,
                 *, progress=None) -> list[TokenNelbo]:
    """NELBO of each scored span given its clean prompt; ``requests`` = [(prompt ids, scored ids), …].

    Every request must fit the canvas (``len(prompt) + len(scored) ≤ canvas``; see :func:`fit_canvas`) and
    score at least one id. ``progress``: an optional tqdm-like object updated by the number of rows done.
    """
    config = config or NelboConfig()
    length = canvas_size(model, config.canvas_length)
    vocab = int(model.config.vocab_size)
    device = model_device(model)
    reqs = [(list(p), list(c)) for p, c in requests]
    for i, (p, c) in enumerate(reqs):
        if not c:
            raise InputError(f"request {i} has nothing to score (empty continuation)")
        if len(p) + len(c) > length:
            raise InputError(f"request {i} needs {len(p) + len(c)} tokens but the canvas holds {length}; "
                             "truncate it first (fit_canvas)")
        bad = [t for t in p + c if not 0 <= t < vocab]
        if bad:
            raise InputError(f"request {i} has token id {bad[0]} outside the model's vocabulary [0, {vocab})")
    k, d = config.num_timesteps, config.num_draws
    rows_per_req = k * d
    sums = [torch.zeros(rows_per_req, dtype=torch.float64) for _ in reqs]
    was_training = model.training
    model.eval()
    try:
        cache: dict[int, _Rows] = {}
        for chunk in _row_chunks(len(reqs), rows_per_req, config.batch_size):
            for i in {i for i, _ in chunk} - cache.keys():
                cache[i] = _Rows(*reqs[i], length, config, vocab)
            _score_batch(model, chunk, cache, sums, config, device)
            last = chunk[-1][0]
            for i in [i for i in cache if i < last]:  # requests are visited in order: drop finished ones
                del cache[i]
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    return [_summarise(s.view(k, d), config, len(c)) for s, (_, c) in zip(sums, reqs)]


def _row_chunks(num_requests: int, rows_per_request: int, batch_size: int):
    """Consecutive (request, row) pairs in batches of ``batch_size`` (lazily: lm-eval runs have millions)."""
    chunk = []
    for i in range(num_requests):
        for r in range(rows_per_request):
            chunk.append((i, r))
            if len(chunk) == batch_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _score_batch(model, chunk, cache, sums, config: NelboConfig, device) -> None:
    rows = [cache[i] for i, _ in chunk]
    idx = [r for _, r in chunk]
    canvas = torch.stack([rows_i.canvas[r] for rows_i, r in zip(rows, idx)]).to(device)
    lengths = torch.tensor([rows_i.target.numel() for rows_i in rows])
    width = int(lengths.max())
    offsets = torch.arange(width)
    valid = offsets[None] < lengths[:, None]  # [B,W]
    starts = torch.tensor([rows_i.start for rows_i in rows])
    positions = torch.where(valid, starts[:, None] + offsets[None], 0)
    x = torch.zeros(len(chunk), width, dtype=torch.long)
    for b, rows_i in enumerate(rows):
        x[b, :rows_i.target.numel()] = rows_i.target
    alpha = torch.stack([rows_i.alpha[r] for rows_i, r in zip(rows, idx)])
    log_snr = torch.stack([rows_i.log_snr[r] for rows_i, r in zip(rows, idx)])
    positions, valid, x = positions.to(device), valid.to(device), x.to(device)
    z_t = canvas.gather(1, positions)
    if config.effective_snr:
        kept = ((z_t == x) & valid).sum(1).double() / lengths.to(device).double()
        log_snr = log_snr_from_alpha(kept.clamp(ALPHA_EFF_EPS, 1 - ALPHA_EFF_EPS).float(),
                                     config.min_log_snr, config.max_log_snr)
        alpha = alpha_from_log_snr(log_snr, config.min_log_snr, config.max_log_snr)
    alpha, log_snr = alpha.to(device)[:, None], log_snr.to(device)[:, None]
    vocab = int(model.config.vocab_size)
    mixing = uniform(vocab)
    # The V-sized terms of long spans (rolling windows of a 100k-vocab model) are sliced by rows so that one
    # slice's logits stay near LOGITS_BUDGET elements.
    step = max(1, LOGITS_BUDGET // (width * vocab))
    per_row = torch.empty(len(chunk), dtype=torch.float64)
    for s in range(0, len(chunk), step):
        e = s + step
        logits = logits_at(model, canvas[s:e], positions[s:e])
        terms = gidd_terms(logits, x[s:e], z_t[s:e], alpha[s:e], log_snr[s:e], mixing)
        per_row[s:e] = (terms.elbo.double() * valid[s:e]).sum(1).cpu()
    for b, (i, r) in enumerate(chunk):
        sums[i][r] = per_row[b]


@torch.inference_mode()
def argmax_reproduces(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], length: int, *,
                      seed: int = 0, batch_size: int = 32) -> list[bool]:
    """Per request: does the argmax of one forward on the clean canvas [prompt | scored | random tail]
    equal the scored ids at every scored position? (lm-eval's ``is_greedy`` for a denoiser.)"""
    vocab = int(model.config.vocab_size)
    device = model_device(model)
    mixing = uniform(vocab)
    out: list[bool] = []
    for start in range(0, len(requests), batch_size):
        chunk = [(list(p), list(c)) for p, c in requests[start:start + batch_size]]
        rows, spans = [], []
        for p, c in chunk:
            gen = torch.Generator().manual_seed(request_seed(seed, p, c) ^ 1)
            tail = mixing.sample(torch.zeros(length - len(p) - len(c)), generator=gen)
            rows.append(torch.cat([torch.tensor(p + c, dtype=torch.long), tail]))
            spans.append((len(p), len(c)))
        width = max(c for _, c in spans)
        offsets = torch.arange(width)
        positions = torch.stack([torch.clamp(p + offsets, max=p + c - 1) for p, c in spans])
        argmax = logits_at(model, torch.stack(rows).to(device), positions.to(device)).argmax(-1).cpu()
        for b, (_, c) in enumerate(spans):
            out.append(bool((argmax[b, :c] == torch.tensor(chunk[b][1])).all()))
    return out


# ============================================================================================ public API
def _as_list(value, name: str) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InputError(f"{name} must be a str or a list of str, got {type(value).__name__}")


def score(model, tokenizer, text: str | list[str], *, continuation: str | list[str] | None = None,
          num_timesteps: int = 128, num_draws: int = 1, canvas_length: int = 2048, batch_size: int = 32,
          seed: int = 0, add_bos: bool = True, add_eos: bool = True, tokenization: Tokenization = "separate",
          truncation: Truncation = "error", effective_snr: bool = False, device=None,
          show_progress: bool = False) -> ScoreResult | list[ScoreResult]:
    """NELBO (nats/token) of ``text``, or of ``continuation`` given the clean prompt ``text``.

    Args:
        model: a :class:`SumiForMaskGeneration` or a model directory (then ``tokenizer`` defaults to its files).
        tokenizer: a :class:`SumiTokenizer` or a tokenizer path.
        text: one text or a list. With ``continuation`` it is the prompt (frozen, never scored).
        continuation: the scored text(s); a list must match ``text`` in length.
        num_timesteps: K grid points over α (> 0). num_draws: noise draws per grid point (> 0).
        canvas_length: canvas ids (capped at the model's max positions). batch_size: canvas rows per forward.
        seed: noise seed (the estimate is deterministic for a seed).
        add_bos / add_eos / tokenization / truncation: see :class:`EncodeOptions`.
        effective_snr: the reference's effective-SNR heuristic (biased; off by default).
        device: move a model loaded from a directory there (default CPU).
        show_progress: a tqdm bar over canvas rows.

    Returns:
        One :class:`ScoreResult` for a str input, a list for a list input.
    """
    config = NelboConfig(num_timesteps=num_timesteps, num_draws=num_draws, canvas_length=canvas_length,
                         batch_size=batch_size, seed=seed, effective_snr=effective_snr)
    options = EncodeOptions(add_bos=add_bos, add_eos=add_eos, tokenization=tokenization, truncation=truncation)
    model, tokenizer = resolve_model(model, tokenizer, device=device)
    if tokenizer is None:
        raise InputError("score() needs a tokenizer (or a model directory that holds one)")
    single = isinstance(text, str) and (continuation is None or isinstance(continuation, str))
    texts = _as_list(text, "text")
    if continuation is None:
        contexts, scored = [None] * len(texts), texts
    else:
        scored = _as_list(continuation, "continuation")
        if len(scored) != len(texts):
            raise InputError(f"got {len(texts)} prompts but {len(scored)} continuations; give one per prompt")
        contexts = texts
    length = canvas_size(model, config.canvas_length)
    pairs = []
    for n, (ctx, cont) in enumerate(zip(contexts, scored)):
        pair = encode_pair(tokenizer, ctx, cont, options)
        what = f"text {n}" if len(texts) > 1 else "text"
        pairs.append(fit_canvas(pair, length, options.truncation, keep_first=int(add_bos), what=what))
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs) * num_timesteps * num_draws, desc="NELBO", unit="row")
    try:
        raw = nelbo_of_ids(model, [(p.prompt, p.target) for p in pairs], config, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    results = [_result(r, p, cont, config) for r, p, cont in zip(raw, pairs, scored)]
    return results[0] if single else results


def _result(raw: TokenNelbo, pair: EncodedPair, text: str, config: NelboConfig) -> ScoreResult:
    n = raw.num_tokens
    nelbo = raw.total_nats / n
    num_bytes = len(text.encode("utf-8"))
    return ScoreResult(
        nelbo=nelbo, total_nats=raw.total_nats, stderr=raw.total_stderr / n, total_stderr=raw.total_stderr,
        num_tokens=n, num_bytes=num_bytes,
        bits_per_byte=raw.total_nats / (num_bytes * math.log(2)) if num_bytes else math.nan,
        perplexity_bound=math.exp(min(nelbo, 700.0)), prompt_tokens=len(pair.prompt),
        truncated_tokens=pair.truncated, num_timesteps=config.num_timesteps, num_draws=config.num_draws,
        per_timestep=raw.per_timestep,
    )
