"""``generate``: the public entry of sampling. Builds the :class:`~sumi.sampling.config.SamplingConfig` of a call
and runs it on one canvas (:func:`sumi.sampling.loop.denoise`) or, with ``sliding``, on as many canvases as the
output needs (:func:`sumi.sampling.long.generate_long`). ``generate_text`` wraps it with a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sumi.errors import InputError
from sumi.sampling.config import SamplingConfig, sampling_config
from sumi.sampling.long import generate_long
from sumi.sampling.loop import (  # re-exported: the types of generate's inputs and outputs
    GenerationOutput,
    StepInfo,
    Trajectory,
    TrajectoryFrame,
    denoise,
    trim,
)

__all__ = ["GenerationOutput", "StepInfo", "Trajectory", "TrajectoryFrame", "cut_at_stop", "generate",
           "generate_text", "trim"]


def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor | list[list[int]] | None = None,
    config: SamplingConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    initial_canvas: torch.Tensor | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
    show_progress: bool = False,
    return_trajectory: bool = False,
    **overrides: Any,
) -> GenerationOutput:
    """Sample continuations of ``input_ids`` on a fixed canvas with a Sumi sampler.

    Args:
        model: maps [B, C] ids to logits [B, C, ≥V] (``.logits`` of the output or the tensor itself); needs
            ``model.config`` with ``vocab_size``, ``max_position_embeddings``, ``bos_token_id``, ``eos_token_id``.
            A model whose forward takes ``logits_at`` runs its head only where the sampler needs logits
            (:class:`~sumi.sampling.loop.LogitSource`).
        input_ids: prompts, a [B, P] int tensor (right-padded; lengths from ``attention_mask``) or a list of id
            lists (different lengths allowed). ``None``: unconditional (prompt length 0, no BOS written).
        config: the sampling options (default: :class:`SamplingConfig`'s defaults).
        overrides: :class:`SamplingConfig` fields (``max_new_tokens=…``, ``sampler=…``, ``seed=…``) applied on
            top of ``config``, so ``generate(model, ids, max_new_tokens=32, seed=0)`` needs no config object.
        generator: the randomness (canvas and sampling) instead of ``seed``; give one or the other.
        initial_canvas: [B, C] starting ids instead of uniform noise (prompt/anchors/frozen are written over it).
        callback: called with a :class:`StepInfo` after every step; returning True stops the loop.
        show_progress: a tqdm bar over the steps.
        return_trajectory: record every canvas in ``output.trajectory``.

    Returns:
        :class:`GenerationOutput`. Raises :class:`~sumi.errors.InputError` for bad input before any forward
        (its subclass :class:`~sumi.errors.OptionError` for a bad option).
    """
    options = sampling_config(config, **overrides)
    if options.sliding:
        per_canvas = {"initial_canvas": initial_canvas, "callback": callback, "return_trajectory": return_trajectory}
        used = [name for name, value in per_canvas.items() if value is not None and value is not False]
        if used:
            raise InputError(f"{', '.join(used)} cannot be combined with sliding=True (each window has its own "
                             "canvas)")
        return generate_long(model, input_ids, options, attention_mask=attention_mask, generator=generator,
                             show_progress=show_progress)
    return denoise(model, input_ids, options, attention_mask=attention_mask, generator=generator,
                   initial_canvas=initial_canvas, callback=callback, show_progress=show_progress,
                   return_trajectory=return_trajectory)


def generate_text(model: torch.nn.Module, tokenizer, prompts: list[str] | str,
                  config: SamplingConfig | None = None, *, stop: list[str] | None = None, add_bos: bool = True,
                  **generate_kwargs) -> list[str]:
    """Texts in, texts out: encode each prompt with BOS prepended (the release convention), sample, and decode
    only the new tokens, cut at the first EOS and at the first of the ``stop`` strings (which is dropped).

    ``config`` and ``generate_kwargs`` go to :func:`generate` (``max_new_tokens``, ``sampler``, ``seed``, …).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not all(isinstance(s, str) for s in stop):
            raise InputError("stop must be a list of strings")
        stop = [s for s in stop if s]
    ids = [tokenizer.encode(p, add_bos=add_bos) for p in prompts]
    out = generate(model, ids, config, **generate_kwargs)
    texts = [tokenizer.decode(seq, skip_special_tokens=True) for seq in out.sequences]
    return [cut_at_stop(text, stop) for text in texts]


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]
