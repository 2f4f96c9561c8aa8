"""Infilling as text: ``prompt … suffix`` or a template such as ``"The {fill:12} said"``.

A diffusion LM fills gaps anywhere on its canvas. This module turns text with gaps into the sampler's inputs —
the prompt ids (BOS + the text before the first gap), the ids of every later text segment frozen at their canvas
positions, and ``EOS, BOS`` frozen right after the last segment (so the text ends there, as the release's
anchor says) — and turns the finished canvas back into text. No canvas position or token id is found by hand.

Used by ``sumi generate --suffix`` / ``--template``, the server's ``suffix`` and :func:`infill`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sumi.errors import InputError

FILL_PATTERN = re.compile(r"\{fill:(\d+)\}")
"""A gap in a template: ``{fill:N}`` = N new tokens."""
MAX_GAP = 1 << 16


@dataclass(frozen=True)
class InfillLayout:
    """Where text and gaps sit on the canvas (positions are canvas indices).

    Attributes:
        prompt: ids before the first gap ([BOS] + the first text segment), the sampler's prompt.
        frozen: (position, id) of every later text token, then of the closing EOS, BOS.
        gaps: (start, end) positions of each gap, end exclusive.
        end: position after the last text token (where the EOS is).
    """

    prompt: list[int]
    frozen: list[tuple[int, int]]
    gaps: list[tuple[int, int]]
    end: int

    @property
    def new_tokens(self) -> int:
        """Positions after the prompt the sampler must cover: gaps, later text and the EOS, BOS pair."""
        return self.end + 2 - len(self.prompt)

    @property
    def fill_tokens(self) -> int:
        return sum(b - a for a, b in self.gaps)


def parse_template(template: str) -> list[str | int]:
    """``"The {fill:12} said"`` → ``["The", 12, " said"]`` (text segments and gap sizes, in order)."""
    if not isinstance(template, str):
        raise InputError(f"a template must be a string, got {type(template).__name__}")
    parts: list[str | int] = []
    position = 0
    for match in FILL_PATTERN.finditer(template):
        parts.append(template[position:match.start()])
        size = int(match.group(1))
        if not 1 <= size <= MAX_GAP:
            raise InputError(f"{match.group(0)}: a gap needs between 1 and {MAX_GAP} tokens")
        parts.append(size)
        position = match.end()
    parts.append(template[position:])
    if not any(isinstance(p, int) for p in parts):
        raise InputError(f"the template {template!r} has no gap; mark one as {{fill:N}} (N new tokens)")
    return [p for p in parts if p != ""]


def layout(tokenizer, parts: list[str | int], *, add_bos: bool = True) -> InfillLayout:
    """The canvas layout of text segments and gaps (see :func:`parse_template`); segments are encoded one by one
    (special-token strings become their ids, as in prompts)."""
    ids: list[int] = [tokenizer.bos_token_id] if add_bos else []
    prompt: list[int] | None = None
    frozen: list[tuple[int, int]] = []
    gaps: list[tuple[int, int]] = []
    for part in parts:
        if isinstance(part, int):
            if prompt is None:
                prompt = list(ids)
            gaps.append((len(ids), len(ids) + part))
            ids.extend([-1] * part)
        else:
            start = len(ids)
            ids.extend(tokenizer.encode(part))
            if prompt is not None:
                frozen.extend((start + i, t) for i, t in enumerate(ids[start:]))
    if prompt is None:
        raise InputError("nothing to fill: give a gap ({fill:N}) or a number of tokens")
    end = len(ids)
    frozen.extend([(end, tokenizer.eos_token_id), (end + 1, tokenizer.bos_token_id)])
    return InfillLayout(prompt=prompt, frozen=frozen, gaps=gaps, end=end)


def prompt_suffix_layout(tokenizer, prompt: str, suffix: str, fill_tokens: int) -> InfillLayout:
    """``prompt`` + ``fill_tokens`` new tokens + ``suffix`` (OpenAI's ``suffix``)."""
    if isinstance(fill_tokens, bool) or not isinstance(fill_tokens, int) or not 1 <= fill_tokens <= MAX_GAP:
        raise InputError(f"the number of tokens to fill must be an integer in [1, {MAX_GAP}], got {fill_tokens!r}")
    return layout(tokenizer, [p for p in (prompt, fill_tokens, suffix) if p != ""])


def sampling_overrides(plan: InfillLayout, rows: int = 1) -> dict:
    """SamplingConfig fields that run ``plan``: the budget spans gaps + later text, the text is frozen, the
    anchor is part of ``frozen``, and nothing is trimmed (an EOS inside a gap is read as written)."""
    return {"max_new_tokens": plan.new_tokens, "anchor_eosbos": False, "trim_at_eos": False,
            "frozen": [list(plan.frozen)] * rows}


def fills(tokenizer, plan: InfillLayout, canvas_row: list[int]) -> list[str]:
    """The text written into each gap of one finished canvas row."""
    return [tokenizer.decode(canvas_row[a:b], skip_special_tokens=True) for a, b in plan.gaps]


@dataclass
class InfillResult:
    text: str
    """The whole text: prompt, fills and later segments (special tokens dropped)."""
    fills: list[str]
    """What each gap received."""
    output: object
    """The sampler's :class:`~sumi.sampling.GenerationOutput`."""


def infill(model, tokenizer, template: str | None = None, *, prompt: str | None = None, suffix: str | None = None,
           fill_tokens: int | None = None, config=None, **overrides) -> InfillResult:
    """Fill the gaps of ``template`` (``"The {fill:12} said"``) or the ``fill_tokens`` between ``prompt`` and
    ``suffix``. ``config`` / ``overrides``: sampler options (:class:`~sumi.sampling.SamplingConfig`)."""
    from sumi.sampling import generate

    if template is not None:
        if prompt is not None or suffix is not None:
            raise InputError("give either a template or prompt/suffix, not both")
        plan = layout(tokenizer, parse_template(template))
    else:
        plan = prompt_suffix_layout(tokenizer, prompt or "", suffix or "", fill_tokens or 0)
    out = generate(model, [plan.prompt], config, **{**overrides, **sampling_overrides(plan)})
    row = out.canvas[0].tolist()
    text = tokenizer.decode(row[:plan.end], skip_special_tokens=True)
    return InfillResult(text=text, fills=fills(tokenizer, plan, row), output=out)
