"""Canvas layout of the released sampler and validation of every generation input (``docs/design.md`` §4).

Row b of a canvas of length C: the prompt (P_b ids, frozen), then the generation budget
``budget_b = max(1, min(max_new_tokens, C − P_b − 2))`` with ``anchor_eosbos`` (else ``max_new_tokens``), then —
with the anchor — ``EOS, BOS`` frozen at P_b + budget_b and P_b + budget_b + 1, then a tail that is denoised as
context (``tail="denoise"``, the release) or frozen at its starting value (``tail="freeze"``). With
``canvas_length=None`` and ``fit_canvas`` the canvas is as wide as the longest row needs (prompt + budget +
anchor, at most the model's positions), so a lone row has no tail at all; without ``fit_canvas`` it is 2048
(the release), capped at the model's positions. Explicit ``frozen`` (position, token) pairs are frozen
too, and positions at or after ``denoise_end`` keep their starting value. Everything here runs before the first
forward pass, so bad input fails fast with an :class:`~sumi.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sumi.diffusion import uniform
from sumi.diffusion.schedule import LOG_SNR_MIN
from sumi.errors import InputError

DEFAULT_CANVAS_LENGTH = 2048
ANCHOR_WIDTH = 2
"""Positions taken by the EOS, BOS anchor."""
FREE = -1
"""Marks a free position in a [B, C] ``frozen`` tensor."""


@dataclass
class CanvasPlan:
    """The starting canvas and what may change. canvas/frozen_mask [B, C]; per-row lists of length B."""

    canvas: torch.Tensor
    frozen_mask: torch.Tensor
    prompt_lengths: list[int]
    budgets: list[int]

    @property
    def free_mask(self) -> torch.Tensor:
        return ~self.frozen_mask


def canvas_width(canvas_length: int | None, max_positions: int, fit_to: int | None = None) -> int:
    """The canvas C a call runs on: ``canvas_length`` capped at the model's max positions; for ``None``,
    ``fit_to`` (the longest prompt + budget + anchor, when the canvas is fitted) or :data:`DEFAULT_CANVAS_LENGTH`
    (the release), capped the same way."""
    if canvas_length is None:
        return min(DEFAULT_CANVAS_LENGTH if fit_to is None else fit_to, max_positions)
    return min(canvas_length, max_positions)


def row_budget(max_new_tokens: int, prompt_length: int, canvas_length: int, anchor_eosbos: bool) -> int:
    """New-token budget of one row: ``max(1, min(max_new_tokens, C − P − 2))`` with the anchor (which takes the
    two positions after the budget), else ``max_new_tokens``. The only copy of this rule."""
    if not anchor_eosbos:
        return max_new_tokens
    return max(1, min(max_new_tokens, canvas_length - prompt_length - ANCHOR_WIDTH))


def parse_prompts(input_ids, attention_mask=None) -> list[list[int]] | None:
    """Prompts as lists of ids: from a [B, P] tensor (right-padded, lengths from ``attention_mask``), a [P]
    tensor (one row), or a list of id lists. ``None`` stays ``None`` (unconditional)."""
    if input_ids is None:
        if attention_mask is not None:
            raise InputError("attention_mask was given without input_ids")
        return None
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise InputError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(1, -1)
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, prompt_len], got shape {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
        if attention_mask is None:
            return rows
        mask = torch.as_tensor(attention_mask).to(torch.bool).cpu()
        if mask.shape != input_ids.shape:
            raise InputError(f"attention_mask shape {tuple(mask.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        lengths = mask.sum(1)
        left_aligned = torch.arange(mask.shape[1])[None] < lengths[:, None]
        if not torch.equal(mask, left_aligned):
            raise InputError("prompts must be left-aligned (attention_mask = 1…1 0…0 per row); re-pad on the right")
        return [row[: int(n)] for row, n in zip(rows, lengths)]
    if isinstance(input_ids, Sequence) and not isinstance(input_ids, (str, bytes)):
        if attention_mask is not None:
            raise InputError("attention_mask only applies to a tensor of input_ids; lists carry their lengths")
        rows = list(input_ids)
        if rows and all(isinstance(v, int) for v in rows):
            rows = [rows]  # a single prompt given as a flat list
        out = []
        for row in rows:
            if isinstance(row, torch.Tensor):
                row = row.tolist()
            if not isinstance(row, Sequence) or not all(isinstance(v, int) for v in row):
                raise InputError("input_ids must be a [B, P] tensor or a list of lists of int token ids")
            out.append(list(row))
        return out
    raise InputError(f"input_ids must be a tensor or a list of lists of ids, got {type(input_ids).__name__}")


def _check_ids(ids: Sequence[int], vocab_size: int, what: str) -> None:
    bad = [v for v in ids if not 0 <= v < vocab_size]
    if bad:
        raise InputError(f"{what} holds token id {bad[0]} outside [0, {vocab_size}); was it encoded with this "
                         "model's tokenizer?")


def _frozen_pairs(frozen, batch: int, canvas_length: int) -> list[list[tuple[int, int]]]:
    """Normalise ``frozen`` (a [B, C] tensor with −1 = free, or per-row lists of (position, token))."""
    if frozen is None:
        return [[] for _ in range(batch)]
    if isinstance(frozen, torch.Tensor):
        if frozen.dim() == 1:
            frozen = frozen[None]
        if frozen.shape != (batch, canvas_length):
            raise InputError(f"a frozen tensor must be [batch={batch}, canvas={canvas_length}] with -1 = free, "
                             f"got shape {tuple(frozen.shape)}")
        rows = frozen.cpu().tolist()
        return [[(pos, tok) for pos, tok in enumerate(row) if tok != FREE] for row in rows]
    frozen = list(frozen)
    if len(frozen) != batch:
        raise InputError(f"frozen must have one list of (position, token) pairs per row: got {len(frozen)} "
                         f"lists for a batch of {batch}")
    out = []
    for row in frozen:
        pairs = []
        for item in row:
            if len(item) != 2:
                raise InputError(f"frozen entries must be (position, token) pairs, got {item!r}")
            pairs.append((int(item[0]), int(item[1])))
        out.append(pairs)
    return out


def _per_row(value, batch: int, name: str) -> list[int | None]:
    if value is None or isinstance(value, int):
        return [value] * batch
    value = list(value)
    if len(value) != batch:
        raise InputError(f"{name} must be an int or one value per row ({batch}), got {len(value)} values")
    return value


def plan_canvas(prompts: list[list[int]] | None, *, vocab_size: int, max_positions: int, bos_id: int,
                eos_id: int, max_new_tokens: int, canvas_length: int | None = None, anchor_eosbos: bool = True,
                frozen=None, denoise_end=None, initial_canvas: torch.Tensor | None = None,
                min_log_snr: float = LOG_SNR_MIN, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None, batch_size: int | None = None,
                tail: str = "denoise", fit_canvas: bool = False,
                shorten_to_fit: bool = False) -> CanvasPlan:
    """Validate the layout and build the starting canvas (uniform random ids unless ``initial_canvas``).

    The random canvas is the prior draw at λ_min (pure uniform noise: every id equally likely), drawn as the
    release does: only after the prompt, ``randint(V, [B, C − P])`` from ``generator`` (rows of different prompt
    lengths take consecutive chunks of one draw), so the same seed gives the release's starting canvas.
    ``shorten_to_fit``: a row whose prompt plus ``max_new_tokens`` exceeds the canvas gets the budget that fits
    (the release's rule) instead of an error.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if initial_canvas is not None:
        initial_canvas = torch.as_tensor(initial_canvas)
        if initial_canvas.dim() == 1:
            initial_canvas = initial_canvas[None]
        if initial_canvas.dim() != 2 or initial_canvas.dtype.is_floating_point:
            raise InputError(f"initial_canvas must be an integer [batch, canvas] tensor, got "
                             f"{tuple(initial_canvas.shape)} {initial_canvas.dtype}")
        width = initial_canvas.shape[1]
        if canvas_length is not None and canvas_length != width:
            raise InputError(f"canvas_length={canvas_length} disagrees with initial_canvas width {width}")
        if width > max_positions:
            raise InputError(f"initial_canvas width {width} exceeds the model's max positions {max_positions}")
        canvas_length = width
    if canvas_length is not None and (not isinstance(canvas_length, int) or canvas_length < 2):
        raise InputError(f"canvas_length must be an integer >= 2, got {canvas_length!r}")
    longest = max((len(p) for p in prompts), default=0) if prompts is not None else 0
    needed = longest + max_new_tokens + (ANCHOR_WIDTH if anchor_eosbos else 0)
    length = canvas_width(canvas_length, max_positions, fit_to=needed if fit_canvas else None)

    batch = len(prompts) if prompts is not None else None
    for other in (initial_canvas.shape[0] if initial_canvas is not None else None, batch_size):
        if other is not None and batch is not None and other != batch:
            raise InputError(f"batch sizes disagree: {batch} prompts but {other} rows elsewhere")
        batch = batch if batch is not None else other
    if batch is None:
        if isinstance(frozen, torch.Tensor):
            batch = 1 if frozen.dim() == 1 else frozen.shape[0]
        elif frozen is not None:
            batch = len(list(frozen))
        else:
            batch = 1
    if batch < 1:
        raise InputError("nothing to generate: the batch is empty")
    prompts = prompts if prompts is not None else [[] for _ in range(batch)]

    prompt_lengths, budgets = [], []
    for b, prompt in enumerate(prompts):
        _check_ids(prompt, vocab_size, f"prompt {b}")
        p = len(prompt)
        if p >= length:
            raise InputError(f"prompt {b} has {p} tokens but the canvas holds {length} (max positions "
                             f"{max_positions}); shorten the prompt or raise canvas_length")
        if p + max_new_tokens > length and not shorten_to_fit:
            raise InputError(f"prompt {b} ({p} tokens) + max_new_tokens={max_new_tokens} does not fit the canvas "
                             f"of {length}; lower max_new_tokens, raise canvas_length, or pass sliding=True "
                             "(sumi.sampling.generate_long) to slide the canvas")
        budget = row_budget(min(max_new_tokens, length - p), p, length, anchor_eosbos)
        prompt_lengths.append(p)
        budgets.append(budget)

    if initial_canvas is not None:
        _check_ids(initial_canvas.flatten().tolist(), vocab_size, "initial_canvas")
        canvas = initial_canvas.to(device=device, dtype=torch.long).clone()
    else:
        # One draw of Σ_b (C − P_b) ids, row b taking the next C − P_b: for equal prompt lengths this is exactly
        # randint(V, [B, C − P]), and a row's noise does not depend on the other rows' prompt lengths.
        sizes = [length - p for p in prompt_lengths]
        log_snr = torch.full((sum(sizes),), float(min_log_snr), device=device)
        noise = uniform(vocab_size).sample(log_snr, generator=generator).split(sizes)
        canvas = torch.zeros(batch, length, dtype=torch.long, device=device)
        for b, (p, row) in enumerate(zip(prompt_lengths, noise)):
            canvas[b, p:] = row
    frozen_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    pinned: list[dict[int, int]] = []
    for prompt, budget in zip(prompts, budgets):
        p = len(prompt)
        row = {i: tok for i, tok in enumerate(prompt)}
        if anchor_eosbos:
            for pos, tok in ((p + budget, eos_id), (p + budget + 1, bos_id)):
                if pos < length:
                    row[pos] = tok
        pinned.append(row)
    for b, pairs in enumerate(_frozen_pairs(frozen, batch, length)):
        p = prompt_lengths[b]
        for pos, tok in pairs:
            if not 0 <= pos < length:
                raise InputError(f"frozen position {pos} (row {b}) is outside the canvas [0, {length})")
            _check_ids([tok], vocab_size, f"frozen token at position {pos} (row {b})")
            if pos in pinned[b] and pinned[b][pos] != tok:
                what = "the prompt" if pos < p else "the EOS/BOS anchor (pass anchor_eosbos=False)"
                raise InputError(f"frozen position {pos} (row {b}) = {tok} clashes with {what}, which holds "
                                 f"{pinned[b][pos]} there")
            pinned[b][pos] = tok
    for b, end in enumerate(_per_row(denoise_end, batch, "denoise_end")):
        if end is None and tail == "freeze":
            end = min(prompt_lengths[b] + budgets[b] + (ANCHOR_WIDTH if anchor_eosbos else 0), length)
        if end is None:
            continue
        need = prompt_lengths[b] + budgets[b]
        if not need <= end <= length:
            raise InputError(f"denoise_end={end} (row {b}) must lie in [{need}, {length}]: the prompt and the "
                             f"{budgets[b]} new tokens must be denoised")
        frozen_mask[b, end:] = True
    for b, row in enumerate(pinned):
        if row:
            pos = torch.tensor(list(row.keys()), device=device)
            canvas[b, pos] = torch.tensor(list(row.values()), device=device)
            frozen_mask[b, pos] = True
    return CanvasPlan(canvas=canvas, frozen_mask=frozen_mask, prompt_lengths=prompt_lengths, budgets=budgets)
