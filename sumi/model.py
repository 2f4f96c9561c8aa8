"""The Sumi transformer: a plain bidirectional pre-norm decoder-style stack with an off-by-one softmax.

    input_ids [B,S] → embed_tokens → N × Block → norm → lm_head → logits [B,S,V]
    Block:  h = h + attn(input_layernorm(h));  h = h + mlp(post_attention_layernorm(h))

Parameter names equal the release's tensor names (``docs/design.md`` §3), so loading a checkpoint is
a dict copy. Parallelism, activation checkpointing and compilation are applied from outside
(``sumi.train.parallelize``); this module never imports ``torch.distributed``.

Attention uses the *off-by-one* ("sink") softmax ``p_i = exp(s_i) / (1 + Σ_j exp(s_j))``. Two paths compute it:

* ``eager``: the explicit reference — scores, a sink logit fixed at 0 in the normaliser, fp32 softmax.
* ``sdpa``: ``F.scaled_dot_product_attention`` with one extra key whose score is always 0 (a zero key gives
  q·0 = 0) and whose value is the zero vector, which is exactly the sink. GQA runs with ``enable_gqa`` so K/V
  are never copied per query head.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sumi.config import SumiConfig
from sumi.diffusion.loss import model_loss
from sumi.errors import InputError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
IGNORE_INDEX = -100
SAMPLER_KEYWORDS = ("logits_at", "last_hidden_state", "return_last_hidden_state", "validate")
"""Keywords of :meth:`SumiForMaskGeneration.forward` that samplers and scorers use for their fast paths."""


def takes_sampler_keywords(module: nn.Module) -> bool:
    """True when ``module``'s forward accepts :data:`SAMPLER_KEYWORDS`: it declares them, or passes ``**kwargs``
    through as DDP, ``torch.compile`` and PEFT wrappers do (callers still fall back if the keywords are ignored).
    A duck-typed check, so a wrapped model keeps the fast paths an ``isinstance`` test would deny it."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters for name in SAMPLER_KEYWORDS)


@dataclass
class SumiOutput:
    """What the model returns. ``logits`` [B,S,V] (or [n,V] at the ``logits_at`` positions); ``loss`` a scalar
    when labels and t were given; ``last_hidden_state`` [B,S,D] (after the final norm) when asked for."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    last_hidden_state: torch.Tensor | None = None


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x²) + eps)`` with the statistic in fp32 (no (1+w) offset)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_tables(head_dim: int, theta: float, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [max_positions, head_dim] fp32, for the rotate-half pairing: the angle of position p and
    channel i (and i + head_dim/2) is p·θ^(−2i/head_dim), computed in fp64."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


class RotaryEmbedding(nn.Module):
    """RoPE tables (fp32) for the rotate-half convention: channel i pairs with channel i + head_dim/2."""

    def __init__(self, head_dim: int, theta: float, max_positions: int) -> None:
        super().__init__()
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        self.register_buffer("cos", torch.empty(max_positions, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_positions, head_dim), persistent=False)

    def init_tables(self, device: torch.device | str | None = None) -> None:
        """Fill the tables (on ``device``, default where they are; on the meta device only shapes exist, and
        they are filled after materialisation). Every place that needs RoPE tables calls this."""
        device = torch.device(device) if device is not None else self.cos.device
        if device.type == "meta":
            return
        self.cos, self.sin = (table.to(device) for table in rope_tables(self.head_dim, self.theta,
                                                                        self.max_positions))

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[:seq_len], self.sin[:seq_len]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B,H,S,hd] by position; math in fp32, result in x's dtype."""
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def sink_attention_eager(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, is_causal: bool
) -> torch.Tensor:
    """Reference off-by-one attention. q [B,H,S,hd], k/v [B,Hkv,S,hd], key_mask [B,S] bool (True = keep).

    Returns [B,H,S,hd]. Softmax in fp32 with an implicit extra logit 0: p = exp(s) / (1 + Σ exp(s)).
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    compute = torch.promote_types(q.dtype, torch.float32)  # fp32 at least (fp64 stays fp64 for tests)
    scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    if is_causal:
        s = q.shape[2]
        causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    # The sink: log(1 + Σ exp(s)) = logsumexp over the scores and one extra 0.
    sink = torch.zeros(*scores.shape[:-1], 1, dtype=scores.dtype, device=scores.device)
    log_norm = torch.logsumexp(torch.cat([scores, sink], dim=-1), dim=-1, keepdim=True)
    probs = torch.exp(scores - log_norm)
    return (probs @ v.to(compute)).to(q.dtype)


def sink_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, is_causal: bool
) -> torch.Tensor:
    """The same as :func:`sink_attention_eager` through fused SDPA, via one zero key / zero value slot."""
    b, hkv, s, hd = k.shape
    zero = k.new_zeros(b, hkv, 1, hd)
    k = torch.cat([k, zero], dim=2)
    v = torch.cat([v, zero], dim=2)
    mask = None
    if key_mask is not None or is_causal:
        keep = torch.ones(b, 1, s, s + 1, dtype=torch.bool, device=q.device)
        if key_mask is not None:
            keep[..., :s] &= key_mask[:, None, None, :]
        if is_causal:
            keep[..., :s] &= torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
        mask = keep
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != hkv)


class SumiAttention(nn.Module):
    def __init__(self, config: SumiConfig) -> None:
        super().__init__()
        d, hd = config.hidden_size, config.resolved_head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, hd,
        )
        self.is_causal = config.is_causal
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)
        self.attn_implementation = "sdpa"

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attend = sink_attention_sdpa if self.attn_implementation == "sdpa" else sink_attention_eager
        out = attend(q, k, v, key_mask, self.is_causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class SumiMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: SumiConfig) -> None:
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SumiBlock(nn.Module):
    def __init__(self, config: SumiConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SumiAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SumiMLP(config)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), rope, key_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class SumiModel(nn.Module):
    """The trunk: embeddings, blocks, final norm (release prefix ``model.``)."""

    def __init__(self, config: SumiConfig) -> None:
        super().__init__()
        # The pad row gets no gradient (as in the release): padding_idx only masks the gradient here, since
        # init_weights overwrites every row.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(SumiBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.resolved_head_dim, config.rope_theta, config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        rope = self.rotary(input_ids.shape[1])
        for layer in self.layers:
            h = layer(h, rope, key_mask)
        return self.norm(h)


class SumiForMaskGeneration(nn.Module):
    """Sumi with its untied head. ``forward`` follows the released model's contract.

    Construction allocates shapes only; call :meth:`init_weights` (or load a checkpoint) before use. This lets
    a 7B model be built on the meta device, sharded, then materialised.
    """

    def __init__(self, config: SumiConfig) -> None:
        super().__init__()
        self.config = config
        self.model = SumiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_embeddings()

    def tie_embeddings(self) -> None:
        """With ``tie_word_embeddings``, make the head share the input embedding's weight (after construction,
        loading by assignment, or materialisation replaced either): the one place weights are tied."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: SumiConfig, *, seed: int | None = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> SumiForMaskGeneration:
        """Build and initialise a model (fp32 unless ``dtype`` is given)."""
        with torch.device(device or "cpu"):
            model = cls(config)
        model.init_weights(seed=seed)
        return model.to(dtype=dtype) if dtype is not None else model

    def initial_value(self, name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """The fp32 initial value of parameter ``name`` — the whole init policy, in one place.

        Normal(0, initializer_range) for embeddings and linear weights; RMSNorm gains 1. Residual-output
        projections (o_proj, down_proj) are scaled by 1/sqrt(2·layers) so the residual stream's variance stays
        O(1) at depth (GPT-2 convention). Draws from ``generator`` (CPU) in the order parameters are visited, so
        a sharded initialisation that visits the same names gives the same weights.
        """
        if name.endswith("norm.weight") or "layernorm" in name:
            return torch.ones(shape)
        std = self.config.initializer_range
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            std /= math.sqrt(2 * self.config.num_hidden_layers)
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter with :meth:`initial_value` and build the RoPE tables (no-op on meta)."""
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        for name, param in self.named_parameters():
            if param.device.type != "meta":
                param.copy_(self.initial_value(name, param.shape, gen).to(param.dtype))
        self.model.rotary.init_tables()

    def set_attn_implementation(self, name: str) -> None:
        """Choose the attention path: ``"sdpa"`` (fused, default) or ``"eager"`` (explicit reference)."""
        if name not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"unknown attention implementation {name!r}; use one of {ATTN_IMPLEMENTATIONS}")
        for layer in self.model.layers:
            layer.self_attn.attn_implementation = name

    @property
    def attn_implementation(self) -> str:
        return self.model.layers[0].self_attn.attn_implementation if len(self.model.layers) else "sdpa"

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (transformers' signature; shared tensors counted once).

        ``exclude_embeddings`` leaves out the two V×d matrices (input embedding and output head), as
        :meth:`parameter_counts`'s ``non_embedding``; ``only_trainable`` counts tensors with ``requires_grad``.
        """
        if not only_trainable:
            counts = self.parameter_counts()
            return counts["non_embedding"] if exclude_embeddings else counts["total"]
        skip = {id(self.model.embed_tokens.weight), id(self.lm_head.weight)} if exclude_embeddings else set()
        unique = {id(p): p for p in self.parameters() if p.requires_grad and id(p) not in skip}
        return sum(p.numel() for p in unique.values())

    def parameter_counts(self) -> dict[str, int]:
        """Counts from the actual tensors (works on the meta device): total, embedding, non_embedding."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        embed = self.model.embed_tokens.weight.numel()
        if self.lm_head.weight is not self.model.embed_tokens.weight:
            embed += self.lm_head.weight.numel()
        return {"total": total, "embedding": embed, "non_embedding": total - embed}

    # ------------------------------------------------------------------ forward
    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        """Raise :class:`InputError` for ids outside [0, vocab) or sequences longer than the RoPE table."""
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise InputError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; shorten the input or use a model with longer positions"
            )
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise InputError(
                f"token ids must lie in [0, {self.config.vocab_size}); got min {int(input_ids.min())}, "
                f"max {int(input_ids.max())} — was the text encoded with this model's tokenizer?"
            )

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        t: torch.Tensor | float | None = None,
        *,
        logits_at: torch.Tensor | None = None,
        last_hidden_state: torch.Tensor | None = None,
        return_last_hidden_state: bool = False,
        validate: bool = True,
    ) -> SumiOutput:
        """Logits for a (noisy) canvas, and the Sumi training loss when ``labels`` and ``t`` are given.

        Args:
            input_ids: [B,S] noisy token ids z (may be None when ``last_hidden_state`` is given).
            attention_mask: optional [B,S] keep-mask over keys (1/True = real token, 0 = padding).
            labels: optional [B,S] clean ids x; −100 marks positions excluded from the loss.
            t: diffusion time(s) in (0,1), shape [B], [B,1] or [B,S] (α = 1 − t). Required with ``labels``.
            logits_at: optional [B,S] bool mask: run the head only there and return logits [n,V] (row-major
                order). Samplers and scorers ask for few positions; the head is ~40% of a forward at V = 32k.
            last_hidden_state: [B,S,D] from an earlier call with ``return_last_hidden_state``: skip the trunk
                and only apply the head (a sampler reuses an unchanged row's trunk this way).
            return_last_hidden_state: also return the trunk's output (after the final norm).
            validate: check id and label ranges (host syncs); the trainer and the samplers, which validated
                their ids once, turn it off in their loops.

        These keywords are the whole interface samplers and scorers use, so a wrapper that passes keyword
        arguments through (DDP, ``torch.compile``, PEFT) keeps their fast paths (``docs/design.md`` §4).

        Returns:
            :class:`SumiOutput` with ``logits`` in the parameter dtype and, with labels, the scalar ``loss``
            (nats) plus detached ``metrics`` (``elbo``, ``kl``, ``is``, ``z_loss``).
        """
        if last_hidden_state is None:
            hidden = self.trunk(input_ids, attention_mask, validate=validate)
        else:
            hidden = last_hidden_state
        if logits_at is not None:
            if labels is not None:
                raise InputError("logits_at selects positions for sampling; the loss needs the logits everywhere")
            if logits_at.dtype != torch.bool or logits_at.shape != hidden.shape[:2]:
                raise InputError(f"logits_at must be a bool mask of shape {tuple(hidden.shape[:2])}, got "
                                 f"{logits_at.dtype} {tuple(logits_at.shape)}")
            hidden_out = hidden
            hidden = hidden[logits_at]
        else:
            hidden_out = hidden
        logits = self.lm_head(hidden)
        kept = hidden_out if return_last_hidden_state else None
        if labels is None:
            if t is not None:
                raise InputError("t was given without labels; pass labels (the clean ids) to get a loss")
            return SumiOutput(logits=logits, last_hidden_state=kept)
        if validate:
            bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.config.vocab_size))
            if bool(bad.any()):
                raise InputError(f"labels must be -100 (ignored) or ids in [0, {self.config.vocab_size})")
        loss, metrics = model_loss(self.config, logits, input_ids, labels, t)
        return SumiOutput(logits=logits, loss=loss, metrics=metrics, last_hidden_state=kept)

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              validate: bool = True) -> torch.Tensor:
        """Embeddings → blocks → final norm: hidden states [B,S,D] (the forward without the head)."""
        if validate:
            self.check_input_ids(input_ids)
        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise InputError(
                    f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                    f"{tuple(input_ids.shape)}"
                )
            key_mask = attention_mask.to(torch.bool)
            if bool(key_mask.all()):
                key_mask = None  # nothing masked: let SDPA take its unmasked fast path
        return self.model(input_ids, key_mask)
