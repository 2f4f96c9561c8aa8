"""Sumi for ``transformers`` remote code (``trust_remote_code=True``): needs only torch and transformers.

sumi writes this file next to every model it saves (with ``auto_map`` in config.json), so
``AutoModelForMaskGeneration.from_pretrained(dir, trust_remote_code=True)`` works where sumi is not installed.
It restates, compactly and self-contained, the model of sumi's ``docs/design.md`` §1: pre-norm bidirectional
blocks, RMSNorm (fp32 statistic), rotate-half RoPE, GQA attention with the off-by-one softmax (one always-zero
key/value slot), SwiGLU, untied head; and the release's ``generate`` (ancestral / adaptive / greedy samplers on a
fixed canvas).
With sumi installed, sumi's own classes are used instead (same tensors, same outputs).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_sumi import SumiConfig


class SumiRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def _rope_tables(head_dim, theta, length, device):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _rotate(x, cos, sin):
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class SumiAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, \
            config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, key_mask):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        # Off-by-one softmax exp(s_i) / (1 + sum_j exp(s_j)), in fp32: one extra key whose score is always 0 and
        # whose value is the zero vector.
        q, k, v = q.float(), k.float(), v.float()
        zeros = k.new_zeros(b, self.heads, 1, self.head_dim)
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
        mask = None
        if key_mask is not None:
            keep = torch.cat([key_mask.bool(), key_mask.new_ones(b, 1).bool()], dim=1)
            mask = keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).to(x.dtype)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class SumiMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SumiBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = SumiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SumiAttention(config)
        self.post_attention_layernorm = SumiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SumiMLP(config)

    def forward(self, h, cos, sin, key_mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, key_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class SumiModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SumiBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = SumiRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, key_mask=None, hidden_states=None):
        theta = float(self.config.rope_parameters.get("rope_theta", 500000.0))
        cos, sin = _rope_tables(self.config.head_dim, theta, input_ids.shape[1], input_ids.device)
        h = self.embed_tokens(input_ids)
        if hidden_states is not None:
            hidden_states.append(h)
        for layer in self.layers:
            h = layer(h, cos, sin, key_mask)
            if hidden_states is not None:
                hidden_states.append(h)
        h = self.norm(h)
        if hidden_states is not None:
            hidden_states[-1] = h
        return h


@dataclass
class SumiOutput(ModelOutput):
    logits: torch.FloatTensor = None
    hidden_states: tuple = None


@dataclass
class SumiGenerateOutput(ModelOutput):
    sequences: torch.LongTensor = None
    canvas: torch.LongTensor = None
    hidden_states: tuple = None


_DEFAULTS = {"sampler": "ancestral", "steps": 128, "temperature": 1.0, "canvas_length": 2048, "max_new_tokens": 128,
             "tokens_per_step": 1, "anchor_eosbos": True, "do_sample": None, "num_return_sequences": 1, "seed": None,
             "output_hidden_states": False, "top_k": None, "top_p": None, "schedule": "linear"}
_LOG_SNR_MIN, _LOG_SNR_MAX = -9.0, 9.0


class SumiForMaskGeneration(PreTrainedModel):
    config_class = SumiConfig
    base_model_prefix = "model"
    _no_split_modules = ["SumiBlock"]
    _keys_to_ignore_on_load_unexpected = [r".*\._extra_state$", r".*rotary.*"]

    def __init__(self, config):
        super().__init__(config)
        self.model = SumiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        elif isinstance(module, SumiRMSNorm):
            module.weight.data.fill_(1.0)

    @classmethod
    def can_generate(cls):
        return True

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **kwargs):
        states = [] if output_hidden_states else None
        hidden = self.model(input_ids, attention_mask, states)
        return SumiOutput(logits=self.lm_head(hidden), hidden_states=tuple(states) if states is not None else None)

    # ------------------------------------------------------------------ the release's generate
    def _options(self, generation_config, kwargs):
        options = dict(_DEFAULTS)
        for source in (getattr(self, "generation_config", None), generation_config):
            if source is not None:
                for key, value in source.to_diff_dict().items():
                    key = {"num_denoising_steps": "steps"}.get(key, key)
                    if key in options and value is not None:
                        options[key] = value
        for key, value in kwargs.items():
            key = {"num_denoising_steps": "steps"}.get(key, key)
            if key in options:
                options[key] = value
        if options["do_sample"] is False:
            options["temperature"] = 0.0
            if options["sampler"] == "ancestral":
                options["sampler"] = "greedy"
        return options

    def _clean_distribution(self, logits, temperature, top_k, top_p):
        if temperature == 0:
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if top_p is not None:
            sorted_probs, order = probs.sort(-1, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, generation_config=None, generator=None, **kwargs):
        """The release's generate: ``sequences`` [B, <=C] with the prompt, cut after the first EOS and
        right-padded with pad_token_id, and the final ``canvas`` [B, C]."""
        cfg, o = self.config, self._options(generation_config, kwargs)
        device = self.lm_head.weight.device
        vocab = cfg.vocab_size
        if input_ids is None:
            prompts = [[]]
        else:
            rows = input_ids.tolist()
            lengths = attention_mask.sum(1).tolist() if attention_mask is not None else [len(r) for r in rows]
            prompts = [row[:int(n)] for row, n in zip(rows, lengths)]
        prompts = [p for p in prompts for _ in range(int(o["num_return_sequences"]))]
        width = min(int(o["canvas_length"]), cfg.max_position_embeddings)
        if generator is None:
            if o["seed"] is not None:
                generator = torch.Generator(device=device).manual_seed(int(o["seed"]))
            else:
                generator = torch.default_generator if device.type == "cpu" else \
                    torch.cuda.default_generators[device.index or 0]
        sizes = [width - len(p) for p in prompts]
        noise = torch.randint(0, vocab, (sum(sizes),), generator=generator, device=device).split(sizes)
        canvas = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        frozen = torch.zeros_like(canvas, dtype=torch.bool)
        budgets = []
        for b, (prompt, row) in enumerate(zip(prompts, noise)):
            p = len(prompt)
            canvas[b, p:] = row
            canvas[b, :p] = torch.tensor(prompt, dtype=torch.long, device=device)
            frozen[b, :p] = True
            n = min(int(o["max_new_tokens"]), width - p)
            budget = max(1, min(n, width - p - 2)) if o["anchor_eosbos"] else n
            budgets.append(budget)
            if o["anchor_eosbos"]:
                for pos, tok in ((p + budget, cfg.eos_token_id), (p + budget + 1, cfg.bos_token_id)):
                    if pos < width:
                        canvas[b, pos], frozen[b, pos] = tok, True
        steps = int(o["steps"])
        grid = torch.linspace(1e-4, 1 - 1e-4, steps + 1, dtype=torch.float64)
        if o["schedule"] == "cosine":
            grid = 0.5 - 0.5 * torch.cos(math.pi * grid)
        log_snr = torch.logit(grid).clamp(_LOG_SNR_MIN, _LOG_SNR_MAX)
        alpha = torch.sigmoid(log_snr).tolist()
        for k in range(steps):
            logits = self(canvas).logits[..., :vocab].float()
            if o["sampler"] == "greedy":
                new = torch.where(frozen, canvas, logits.argmax(-1))
            elif o["sampler"] == "adaptive":
                probs = logits.softmax(-1)
                confidence = probs.max(-1).values - probs.gather(-1, canvas[..., None]).squeeze(-1)
                confidence = confidence.masked_fill(frozen, float("-inf"))
                top = confidence.topk(min(int(o["tokens_per_step"]), width), dim=-1)
                new = canvas.clone()
                x_hat = self._clean_distribution(logits, float(o["temperature"]), o["top_k"], o["top_p"])
                for b in range(canvas.shape[0]):
                    cols = top.indices[b][top.values[b] > float("-inf")]
                    if float(o["temperature"]) == 0:
                        new[b, cols] = logits[b, cols].argmax(-1)
                    else:
                        new[b, cols] = torch.multinomial(x_hat[b, cols], 1, generator=generator).squeeze(-1)
            else:  # ancestral: the exact posterior p(z_s | z_t) of uniform diffusion
                a_t, a_s = alpha[k], alpha[k + 1]
                x_hat = self._clean_distribution(logits, float(o["temperature"]), o["top_k"], o["top_p"])
                a_ts = a_t / a_s
                prior = a_s * x_hat + (1 - a_s) / vocab
                likelihood = torch.full_like(prior, (1 - a_ts) / vocab)
                likelihood.scatter_add_(-1, canvas[..., None], torch.full_like(canvas[..., None], a_ts,
                                                                               dtype=prior.dtype))
                post = prior * likelihood
                post = post / post.sum(-1, keepdim=True)
                draw = torch.multinomial(post.view(-1, vocab), 1, generator=generator).view_as(canvas)
                new = torch.where(frozen, canvas, draw)
            converged = bool((new == canvas).all()) and (o["sampler"] == "greedy" or (
                o["sampler"] == "adaptive" and float(o["temperature"]) == 0))
            canvas = new
            if converged:
                break
        rows = []
        for row, prompt, budget in zip(canvas.tolist(), prompts, budgets):
            p, end = len(prompt), len(prompt) + budget
            if cfg.eos_token_id in row[p:]:
                end = p + row[p:].index(cfg.eos_token_id) + 1
            rows.append(row[:end])
        sequences = torch.full((len(rows), max(len(r) for r in rows)), cfg.pad_token_id, dtype=torch.long)
        for b, r in enumerate(rows):
            sequences[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        hidden = self(canvas, output_hidden_states=True).hidden_states if o["output_hidden_states"] else None
        return SumiGenerateOutput(sequences=sequences.to(device), canvas=canvas, hidden_states=hidden)
