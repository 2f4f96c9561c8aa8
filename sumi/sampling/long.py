"""Outputs longer than one canvas: slide the canvas (commit the finished part, keep the tail as the prompt).

Window w of row b: prompt = the last ``context_length`` ids of (prompt + everything committed so far); the rest
of the canvas is generated. Intermediate windows run without the ``EOS, BOS`` anchor (the text must not be told
to end there) and fill the whole canvas after the prompt; the last window uses the caller's anchor setting. A
window that ends early at EOS ends the row.
"""

from __future__ import annotations

import torch

from sumi.errors import InputError
from sumi.sampling.canvas import ANCHOR_WIDTH, canvas_width, parse_prompts
from sumi.sampling.config import SamplingConfig, sampling_config
from sumi.sampling.loop import GenerationOutput, denoise, make_generator, model_device


def generate_long(model: torch.nn.Module, input_ids=None, config: SamplingConfig | None = None, *,
                  attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  show_progress: bool = False, **overrides) -> GenerationOutput:
    """Generate ``max_new_tokens`` per row, sliding a canvas of ``canvas_length`` as often as needed.

    Options come from ``config`` with ``overrides`` applied (as for :func:`sumi.sampling.generate`); of them,
    ``context_length`` is how many of the latest ids each window keeps as its prompt (default half the canvas)
    and ``num_denoising_steps`` counts steps per window (default: the window's new-token count).

    Returns a :class:`GenerationOutput` whose ``canvas`` is the last window's canvas of each row (stacked),
    ``steps_run``/``nfe`` summed over windows and rows.
    """
    options = sampling_config(config, **overrides)
    length = canvas_width(options.canvas_length, model.config.max_position_embeddings)
    context = length // 2 if options.context_length is None else options.context_length
    if not 1 <= context <= length - 1 - ANCHOR_WIDTH:
        raise InputError(f"context_length must lie in [1, {length - 1 - ANCHOR_WIDTH}] for a canvas of {length}, "
                         f"got {options.context_length!r}")
    max_new_tokens = options.max_new_tokens
    prompts = parse_prompts(input_ids, attention_mask) or [[]]
    for b, prompt in enumerate(prompts):
        if len(prompt) >= length:
            raise InputError(f"prompt {b} has {len(prompt)} tokens but the canvas holds {length}")
    gen = make_generator(options.seed, generator, model_device(model))
    window = options.replace(canvas_length=length, sliding=False, context_length=None, seed=None)
    sequences, canvases, steps_run, nfe = [], [], 0, 0
    for prompt in prompts:
        history, new_tokens = list(prompt), []
        while True:
            window_prompt = history[-context:] if len(history) > len(prompt) else history
            room = length - len(window_prompt)
            remaining = max_new_tokens - len(new_tokens)
            last = remaining + (ANCHOR_WIDTH if options.anchor_eosbos else 0) <= room
            ask = remaining if last else room
            out = denoise(model, [window_prompt], window.replace(
                max_new_tokens=ask, anchor_eosbos=options.anchor_eosbos if last else False),
                generator=gen, show_progress=show_progress)
            steps_run, nfe = steps_run + out.steps_run, nfe + out.nfe
            piece = out.sequences[0]
            new_tokens += piece
            history += piece
            if last or len(piece) < ask or len(new_tokens) >= max_new_tokens:
                canvases.append(out.canvas[0])
                break
        sequences.append(new_tokens[:max_new_tokens])
    return GenerationOutput(sequences=sequences, canvas=torch.stack(canvases), prompt_lengths=[len(p) for p in prompts],
                            steps_run=steps_run, nfe=nfe, budgets=[max_new_tokens] * len(prompts))
