"""Outputs longer than one canvas: slide the canvas (commit the finished part, keep the tail as the prompt).

Window w of row b: prompt = the last ``context_length`` ids of (prompt + everything committed so far); the rest
of the canvas is generated. Intermediate windows run without the ``EOS, BOS`` anchor (the text must not be told
to end there) and fill the whole canvas after the prompt; the last window uses the caller's anchor setting. A
window that ends early at EOS ends the row.
"""

from __future__ import annotations

import torch

from sumi.errors import InputError
from sumi.sampling.canvas import DEFAULT_CANVAS_LENGTH, parse_prompts
from sumi.sampling.generate import GenerationOutput, generate, make_generator, model_device

ANCHOR_WIDTH = 2
"""Positions taken by the EOS, BOS anchor."""


def generate_long(model: torch.nn.Module, input_ids=None, *, max_new_tokens: int, context_length: int | None = None,
                  canvas_length: int | None = None, num_denoising_steps: int | None = None,
                  anchor_eosbos: bool = True, trim_at_eos: bool = True, seed: int | None = None,
                  generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
                  **generate_kwargs) -> GenerationOutput:
    """Generate ``max_new_tokens`` per row, sliding a canvas of ``canvas_length`` as often as needed.

    Args:
        context_length: how many of the latest ids each window keeps as its prompt (default half the canvas).
        num_denoising_steps: steps per window (default: the window's new-token count).
        other arguments: as :func:`sumi.sampling.generate`.

    Returns a :class:`GenerationOutput` whose ``canvas`` is the last window's canvas of each row (stacked),
    ``steps_run``/``nfe`` summed over windows and rows.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    config = model.config
    length = min(DEFAULT_CANVAS_LENGTH if canvas_length is None else canvas_length, config.max_position_embeddings)
    context = length // 2 if context_length is None else context_length
    if not isinstance(context, int) or not 1 <= context <= length - 1 - ANCHOR_WIDTH:
        raise InputError(f"context_length must lie in [1, {length - 1 - ANCHOR_WIDTH}] for a canvas of {length}, "
                         f"got {context_length!r}")
    prompts = parse_prompts(input_ids, attention_mask) or [[]]
    for b, prompt in enumerate(prompts):
        if len(prompt) >= length:
            raise InputError(f"prompt {b} has {len(prompt)} tokens but the canvas holds {length}")
    gen = make_generator(seed, generator, model_device(model))
    sequences, canvases, steps_run, nfe = [], [], 0, 0
    for prompt in prompts:
        history, new_tokens = list(prompt), []
        while True:
            window_prompt = history[-context:] if len(history) > len(prompt) else history
            room = length - len(window_prompt)
            remaining = max_new_tokens - len(new_tokens)
            last = remaining + (ANCHOR_WIDTH if anchor_eosbos else 0) <= room
            ask = remaining if last else room
            out = generate(model, [window_prompt], max_new_tokens=ask, canvas_length=length,
                           anchor_eosbos=anchor_eosbos if last else False, trim_at_eos=trim_at_eos,
                           num_denoising_steps=num_denoising_steps, generator=gen, **generate_kwargs)
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
