"""``model.generate``: the released Sumi-7B's generate contract, with transformers' conventions.

The release (``docs/design.md`` §4) returns ``sequences`` [B, ≤C] *with the prompt*, cut after the
first EOS at/after the prompt and right-padded with ``pad_token_id``, plus the final ``canvas`` [B, C]. Its
defaults: the ancestral sampler, 128 steps, T = 1, 128 new tokens, a 2048 canvas capped at the model's positions,
``EOS, BOS`` anchored, the tail after it denoised as context; a ``max_new_tokens`` that does not fit the canvas is
shortened (``max(1, min(n, C − P − 2))``), not refused. The starting canvas is the prompt followed by
``randint(V, [B, C − P])`` drawn from the seeded generator, so a seed gives the release's canvas and the
deterministic samplers its tokens.

Precedence of every option: keyword argument > ``generation_config=`` > ``model.generation_config`` (the
directory's ``generation_config.json``) > the release defaults (:data:`sumi.sampling.config.RELEASE`). Only fields a
``GenerationConfig`` sets explicitly count (transformers' own defaults do not override the release's).

transformers names: ``do_sample=False`` is argmax decoding (T = 0; the ancestral sampler, whose posterior still
draws noise, becomes ``greedy``), ``num_return_sequences`` repeats each prompt, ``streamer`` receives the prompt
then the committed prefix's new tokens as the canvas settles (see :class:`_PrefixStreamer`),
``output_hidden_states`` adds the final canvas' hidden states. ``return_sumi_output=True`` returns sumi's
:class:`~sumi.sampling.GenerationOutput` (nfe, budgets, trajectory, …) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from sumi.errors import InputError


def _release_defaults() -> dict[str, Any]:
    """The release's generate defaults: :data:`sumi.sampling.config.RELEASE` under generate's option names."""
    from sumi.sampling.config import RELEASE

    return {"sampler": RELEASE.sampler, "steps": RELEASE.num_denoising_steps, "temperature": RELEASE.temperature,
            "canvas_length": 2048, "anchor_eosbos": RELEASE.anchor_eosbos, "tokens_per_step": RELEASE.tokens_per_step,
            "schedule": RELEASE.schedule, "max_new_tokens": RELEASE.max_new_tokens, "top_k": None, "top_p": None,
            "do_sample": None, "num_return_sequences": 1, "output_hidden_states": False, "seed": None}


# generate() keywords that are sampler options, by the name the release / transformers use for them.
_ALIASES = {"num_denoising_steps": "steps", "canvas": "canvas_length"}
# transformers options that mean nothing for a diffusion canvas but that pipelines and users pass routinely.
_IGNORED = {"return_dict_in_generate", "use_cache", "pad_token_id", "eos_token_id", "bos_token_id", "max_length",
            "min_length", "min_new_tokens", "num_beams", "output_scores", "output_logits", "output_attentions",
            "repetition_penalty", "transformers_version", "_from_model_config", "prefix_allowed_tokens_fn",
            "token_type_ids", "synced_gpus", "assistant_model", "logits_processor", "stopping_criteria",
            "renormalize_logits", "generation_kwargs"}


@dataclass
class SumiGenerateOutput(ModelOutput):
    """The release's generate output.

    Attributes:
        sequences: [B·n, ≤C] int64: prompt + new tokens up to and including the first EOS, right-padded with
            ``pad_token_id`` to the longest row.
        canvas: [B·n, C] int64: the final canvas (prompt, text, anchor, tail).
        hidden_states: with ``output_hidden_states``: (embeddings, block 1, …, block L) of the final canvas, each
            [B·n, C, d]; the last after the final norm (transformers' convention).
    """

    sequences: torch.LongTensor | None = None
    canvas: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def resolve_options(model, generation_config=None, **kwargs: Any) -> dict[str, Any]:
    """The generate options after the precedence rules (keyword > generation_config > model's > release)."""
    options = _release_defaults()
    for source in (getattr(model, "generation_config", None), generation_config):
        if source is None:
            continue
        explicit = source.to_diff_dict() if hasattr(source, "to_diff_dict") else dict(source)
        for key, value in explicit.items():
            key = _ALIASES.get(key, key)
            if key in options and value is not None:
                options[key] = value
    for key, value in kwargs.items():
        name = _ALIASES.get(key, key)
        if name in _IGNORED:
            continue
        if name not in options:
            raise InputError(f"generate() got an unknown option {key!r}; sumi's options: "
                             f"{', '.join(sorted(options))} (plus transformers' generation_config fields)")
        options[name] = value
    if options["do_sample"] is False:
        options["temperature"] = 0.0
        if options["sampler"] == "ancestral":
            options["sampler"] = "greedy"
    elif options["do_sample"] is True and options["temperature"] == 0:
        raise InputError("do_sample=True with temperature=0 is contradictory; set temperature > 0")
    n = options["num_return_sequences"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"num_return_sequences must be an integer >= 1, got {n!r}")
    return options


@torch.inference_mode()
def release_generate(model, input_ids=None, attention_mask=None, generation_config=None, *,
                     streamer=None, generator: torch.Generator | None = None, return_sumi_output: bool = False,
                     **kwargs: Any):
    """``model.generate`` with the release's contract (module docstring). Returns :class:`SumiGenerateOutput`."""
    from sumi.sampling import generate
    from sumi.sampling.canvas import parse_prompts
    from sumi.sampling.config import RELEASE

    options = resolve_options(model, generation_config, **kwargs)
    config = model.config
    if generator is None and options["seed"] is None:
        # transformers' convention: torch.manual_seed(s) before generate() makes it reproducible (and on CPU a
        # Generator seeded with s is the same stream, so seed=s gives the same canvas).
        from sumi.sampling.loop import model_device

        device = model_device(model)
        generator = torch.default_generator if device.type == "cpu" else \
            torch.cuda.default_generators[device.index or 0]
    prompts = parse_prompts(input_ids, attention_mask)
    n = options["num_return_sequences"]
    if prompts is not None and n > 1:
        prompts = [row for row in prompts for _ in range(n)]  # each prompt's samples side by side
    sampling = RELEASE.replace(
        max_new_tokens=int(options["max_new_tokens"]), num_denoising_steps=int(options["steps"]),
        sampler=options["sampler"], schedule=options["schedule"], temperature=float(options["temperature"]),
        top_k=options["top_k"], top_p=options["top_p"], tokens_per_step=int(options["tokens_per_step"]),
        canvas_length=int(options["canvas_length"]), anchor_eosbos=bool(options["anchor_eosbos"]),
        seed=options["seed"],
    )
    batch = len(prompts) if prompts is not None else n
    if prompts is None and n > 1:
        prompts = [[] for _ in range(n)]
    callback = None
    if streamer is not None:
        if batch != 1:
            raise InputError(f"a streamer follows one sequence; got a batch of {batch} (as transformers' streamers)")
        callback = _PrefixStreamer(streamer, prompts[0] if prompts else [], options["sampler"], config.eos_token_id)
    out = generate(model, prompts, sampling, generator=generator, callback=callback)
    if callback is not None:
        callback.finish(out.sequences[0])
    if return_sumi_output:
        return out
    sequences = _release_sequences(out.canvas, out.prompt_lengths, out.budgets, config.eos_token_id,
                                   config.pad_token_id)
    hidden = _hidden_states(model, out.canvas) if options["output_hidden_states"] else None
    return SumiGenerateOutput(sequences=sequences, canvas=out.canvas, hidden_states=hidden)


def _release_sequences(canvas: torch.Tensor, prompt_lengths: list[int], budgets: list[int], eos_id: int,
                       pad_id: int) -> torch.Tensor:
    """Per row: canvas[:e + 1] for the first EOS e at/after the prompt (else prompt + budget), right-padded."""
    rows = []
    for row, p, budget in zip(canvas.tolist(), prompt_lengths, budgets):
        end = p + budget
        tail = row[p:]
        if eos_id in tail:
            end = p + tail.index(eos_id) + 1
        rows.append(row[:end])
    longest = max(len(r) for r in rows)
    out = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(canvas.device)


def _hidden_states(model, canvas: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(embeddings, output of each block, …) of ``canvas``; the last entry after the final norm."""
    trunk = model.model
    h = trunk.embed_tokens(canvas)
    rope = trunk.rotary(canvas.shape[1])
    states = [h]
    for layer in trunk.layers:
        h = layer(h, rope, None)
        states.append(h)
    states[-1] = trunk.norm(h)
    return tuple(states)


class _PrefixStreamer:
    """Feeds a transformers streamer (``put(ids)`` / ``end()``) from sampler steps.

    ``put`` first receives the prompt (as transformers' ``generate`` does; ``TextStreamer(skip_prompt=True)``
    drops it), then, after each step, the new tokens of the *committed prefix*: the longest run of positions
    right after the prompt that the adaptive sampler has committed, up to the first EOS. The ancestral and greedy
    samplers rewrite every position each step, so nothing counts as committed before the last step and their
    text arrives at the end. At the end the rest of the final sequence is sent; a streamed token that a later
    step revised stays streamed (adaptive sampling rarely revisits), and ``sequences`` is authoritative.
    """

    def __init__(self, streamer, prompt: list[int], sampler: str, eos_id: int) -> None:
        self.streamer, self.sampler, self.eos_id = streamer, sampler, eos_id
        self.prompt_length = len(prompt)
        self.sent: list[int] = []
        self.committed: torch.Tensor | None = None
        streamer.put(torch.tensor([prompt], dtype=torch.long))

    def __call__(self, info) -> None:
        if self.sampler != "adaptive":
            return None
        committed = info.committed[0].cpu()
        self.committed = committed if self.committed is None else self.committed | committed
        p, budget = self.prompt_length, info.budgets[0]
        span = self.committed[p:p + budget]
        ready = int(span.long().cumprod(0).sum())  # leading committed positions
        tokens = info.canvas[0, p:p + ready].tolist()
        if self.eos_id in tokens:
            tokens = tokens[:tokens.index(self.eos_id)]
        self._send(tokens)
        return None

    def _send(self, tokens: list[int]) -> None:
        if len(tokens) > len(self.sent):
            new = tokens[len(self.sent):]
            self.streamer.put(torch.tensor(new, dtype=torch.long))
            self.sent = list(tokens)

    def finish(self, final: list[int]) -> None:
        """``final``: the new tokens of the finished row (cut before its EOS)."""
        if final[:len(self.sent)] == self.sent:
            self._send(final)
        self.streamer.end()
