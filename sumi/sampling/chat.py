"""One chat turn with a diffusion model: the conversation → the chat template → one canvas → the reply.

The prompt is the conversation rendered with the tokenizer's chat template and the assistant header
(:func:`sumi.chat.encode_chat` with ``add_generation_prompt``), exactly what ``sumi finetune`` trains as the prompt
of an assistant turn. The canvas has the fine-tuning layout: the reply may use every position up to the EOS/BOS
anchor at the end (``max_new_tokens = C − P − 2``), and it ends at the first ``<|im_end|>`` or EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from sumi.errors import InputError
from sumi.sampling.config import SamplingConfig

END_OF_TURN = "<|im_end|>"
MIN_REPLY_TOKENS = 8
"""A history is shortened until at least this many positions are left for the reply."""


def conversation_ids(messages: Sequence[Mapping], tokenizer, canvas_length: int) -> list[int]:
    """Prompt ids of ``messages`` (ending with a user turn), dropping the oldest turns after any system turn
    until the prompt leaves :data:`MIN_REPLY_TOKENS` positions on the canvas."""
    from sumi.chat import encode_chat

    messages = list(messages)
    system = messages[:1] if messages and messages[0].get("role") == "system" else []
    turns = messages[len(system):]
    while turns:
        ids = encode_chat(system + turns, tokenizer, add_generation_prompt=True).input_ids
        if len(ids) + 2 + MIN_REPLY_TOKENS <= canvas_length:
            return ids
        turns = turns[1:]
        while turns and turns[0].get("role") != "user":  # a history starts with a user turn
            turns = turns[1:]
    raise InputError(f"the last message does not fit a canvas of {canvas_length} with room for a reply; "
                     "shorten it or raise --canvas-length")


def reply_ids(sequence: list[int], tokenizer) -> list[int]:
    """The reply's ids: up to the first end-of-turn (the sampler already cut at EOS)."""
    end = tokenizer.token_to_id(END_OF_TURN)
    return sequence[: sequence.index(end)] if end is not None and end in sequence else sequence


def chat_reply(model: torch.nn.Module, tokenizer, messages: Sequence[Mapping], config: SamplingConfig | None = None,
               *, canvas_length: int = 256, max_new_tokens: int | None = None,
               on_step: Callable[[str], None] | None = None, **overrides) -> str:
    """The assistant's next turn as text.

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]`` ending with the user's turn.
        config / overrides: sampling options (``max_new_tokens`` and ``canvas_length`` are set here).
        canvas_length: C, best the ``finetune.canvas_length`` the model was tuned with.
        max_new_tokens: the reply budget B (``finetune.response_budget`` of the tuning; the canvas is then fitted
            to prompt + B + anchor), or None: every position up to the anchor at the end of the canvas.
        on_step: called after every denoising step with the reply as it currently reads (streaming).
    """
    from sumi.sampling import generate

    canvas_length = min(canvas_length, model.config.max_position_embeddings)
    ids = conversation_ids(messages, tokenizer, canvas_length)
    budget = canvas_length - len(ids) - 2
    if max_new_tokens is not None:
        budget = min(budget, max_new_tokens)
        canvas_length = len(ids) + budget + 2
    callback = None
    if on_step is not None:
        eos = model.config.eos_token_id

        def callback(info):
            row = info.canvas[0, len(ids):len(ids) + budget].tolist()
            on_step(tokenizer.decode(reply_ids(row[: row.index(eos)] if eos in row else row, tokenizer),
                                     skip_special_tokens=True))

    out = generate(model, [ids], config, max_new_tokens=budget, canvas_length=canvas_length, callback=callback,
                   **overrides)
    return tokenizer.decode(reply_ids(out.sequences[0], tokenizer), skip_special_tokens=True).strip()
