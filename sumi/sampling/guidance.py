"""Classifier-free guidance for uniform diffusion (Schiff et al., "Simple Guidance Mechanisms for Discrete
Diffusion Models", arXiv 2412.10193, §3).

One model learns both p(x | prompt) and p(x): in fine-tuning, each example's prompt is replaced with
probability ``finetune.prompt_drop`` by the **unconditional canvas**, PAD at every prompt position (the
response keeps its positions, so both predictions are aligned token for token). At sampling, with guidance
scale γ the clean-token distribution every sampler consumes becomes

    log x̂_γ(v) = γ·log x̂(v | prompt) + (1 − γ)·log x̂(v) − log Z         (Schiff et al., eq. 8, on x̂)

γ = 1 is plain sampling (and costs nothing: the unconditional forward is skipped); γ > 1 sharpens towards
what the prompt makes likely relative to the unconditional model; γ = 0 ignores the prompt.
"""

from __future__ import annotations

import torch


def unconditional_canvas(canvas: torch.Tensor, prompt_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``canvas`` [B, C] with every position of ``prompt_mask`` [B, C] (bool) set to PAD."""
    return canvas.masked_fill(prompt_mask, pad_id)


PROMPT_DROP_STREAM = 1
"""Appended to a row's noise key: the prompt-drop draw has a stream of its own, so it never shifts t or z."""


def drop_prompts(x: torch.Tensor, target_mask: torch.Tensor, probability: float, pad_id: int,
                 keys: list[tuple[int, ...]]) -> torch.Tensor:
    """Clean SFT canvases x [B, C] with each row's prompt (positions before its first target) replaced by the
    unconditional canvas with probability ``probability``; row i decides from the stream of
    ``(*keys[i], PROMPT_DROP_STREAM)`` (:func:`sumi.data.streams.stream_seed`), so the choice is the same on any
    number of ranks and after a resume."""
    if probability <= 0:
        return x
    from sumi.data.streams import stream_seed

    if len(keys) != x.shape[0]:
        raise ValueError(f"{len(keys)} stream keys for {x.shape[0]} rows")
    draws = [torch.rand(1, generator=torch.Generator().manual_seed(stream_seed(*key, PROMPT_DROP_STREAM)))
             for key in keys]
    drop = (torch.cat(draws) < probability)[:, None]
    prompt = target_mask.long().cumsum(dim=1) == 0
    return unconditional_canvas(x, prompt & drop.to(x.device), pad_id)


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Normalised guided log-probabilities [..., V] from two logit tensors of the same shape (fp32)."""
    cond = torch.log_softmax(conditional.float(), dim=-1)
    uncond = torch.log_softmax(unconditional.float(), dim=-1)
    return torch.log_softmax(scale * cond + (1 - scale) * uncond, dim=-1)


class GuidedLogitSource:
    """The :class:`~sumi.sampling.loop.LogitSource` interface (``update``, ``full``, ``at``, ``nfe``) over two
    sources: the canvas as it is, and its unconditional twin (prompt positions PAD). Each forward the sampler
    asks for costs one more on the twin; rows that did not change reuse both caches.

    Args:
        conditional, unconditional: two fresh logit sources over the same model.
        prompt_mask: [B, C] bool, the prompt positions of each row.
        pad_id: the id that fills the prompt in the unconditional canvas.
        scale: γ (1 would equal ``conditional`` alone; the sampler then does not build this class).
    """

    def __init__(self, conditional, unconditional, prompt_mask: torch.Tensor, pad_id: int, scale: float) -> None:
        self.conditional, self.unconditional = conditional, unconditional
        self.prompt_mask, self.pad_id, self.scale = prompt_mask, pad_id, float(scale)

    @property
    def nfe(self) -> int:
        return self.conditional.nfe + self.unconditional.nfe

    def update(self, canvas: torch.Tensor, changed_rows: torch.Tensor | None = None) -> None:
        self.conditional.update(canvas, changed_rows)
        self.unconditional.update(unconditional_canvas(canvas, self.prompt_mask, self.pad_id), changed_rows)

    def full(self) -> torch.Tensor:
        """Guided log-probabilities of every position, [B, C, V] fp32."""
        return guided_logits(self.conditional.full(), self.unconditional.full(), self.scale)

    def at(self, mask: torch.Tensor) -> torch.Tensor:
        """Guided log-probabilities of the positions where ``mask`` [B, C] is True, [n, V] fp32."""
        return guided_logits(self.conditional.at(mask), self.unconditional.at(mask), self.scale)
