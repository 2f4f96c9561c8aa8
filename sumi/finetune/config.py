"""The fine-tuning sections of the run config: the conversation data (``finetune``) and LoRA (``lora``).

Both are inert by default, so a pretraining recipe is unchanged; ``sumi finetune`` requires ``finetune.data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sumi.errors import require

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every attention and MLP projection of a block (the default targets)."""
LORA_EXTRA_TARGETS = ("embed_tokens", "lm_head")
"""Targets that may be added: the input embedding (peft's LoRA for ``nn.Embedding``: every token's vector gets a
rank-r correction, which is how adapters can give words features the base never learned) and the output head."""


@dataclass
class FinetuneSection:
    """Supervised fine-tuning on conversations (see :mod:`sumi.finetune.data` for the canvas layout)."""

    data: Any = ""
    """Training conversations: a JSONL path (records with ``messages``, or ``prompt``/``response``), or a mapping
    ``{type: hf, dataset: NAME, config: ..., split: train}``. Empty = pretraining (no fine-tuning)."""
    heldout_data: Any = ""
    """Held-out conversations for the held-out NELBO (same forms); empty = hold out ``heldout_fraction``."""
    heldout_fraction: float = 0.05
    """Share of the training examples held out when ``heldout_data`` is empty (at least one example)."""
    canvas_length: int = 256
    """Length C of every fine-tuning canvas (prompt + response + EOS fill + the EOS/BOS anchor); generate with
    the same ``canvas_length`` and ``max_new_tokens = C − prompt − 2`` to match training."""
    response_budget: int = 0
    """New-token budget B of every example (what ``max_new_tokens`` is at generation): the response, EOS fill up
    to B positions, then the EOS/BOS anchor; the rest of the canvas is padding that no position attends to.
    0 = fill to the canvas end (B = C − P − 2). A short budget keeps most targets on the response."""
    truncate: bool = False
    """Cut responses that do not fit the canvas (instead of an error naming the example)."""
    prompt_drop: float = 0.0
    """Classifier-free guidance: the probability that an example's prompt is replaced by the unconditional
    canvas (PAD at every prompt position), so one model learns p(x | prompt) and p(x). Schiff et al. use 0.1."""
    max_examples: int = 0
    """Use only the first this many examples (0 = all)."""

    def __post_init__(self) -> None:
        require(isinstance(self.data, str | dict), "finetune.data must be a JSONL path or a mapping {type: hf, ...}")
        require(isinstance(self.heldout_data, str | dict),
                "finetune.heldout_data must be a JSONL path or a mapping {type: hf, ...}")
        require(0.0 < self.heldout_fraction < 1.0,
                f"finetune.heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        require(self.canvas_length >= 4, f"finetune.canvas_length must be >= 4, got {self.canvas_length}")
        require(self.response_budget >= 0, f"finetune.response_budget must be >= 0 (0 = to the canvas end), got "
                f"{self.response_budget}")
        require(0.0 <= self.prompt_drop < 1.0, f"finetune.prompt_drop must lie in [0, 1), got {self.prompt_drop}")
        require(self.max_examples >= 0, f"finetune.max_examples must be >= 0 (0 = all), got {self.max_examples}")

    @property
    def enabled(self) -> bool:
        return bool(self.data)


@dataclass
class LoraSection:
    """Low-rank adapters (LoRA, through ``peft``) instead of full fine-tuning; ``rank: 0`` trains every weight."""

    rank: int = 0
    """Adapter rank r (0 = full fine-tuning, no adapters)."""
    alpha: float = 16.0
    """LoRA scaling numerator: the update is (alpha / rank)·B·A."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Module names that get adapters: a subset of :data:`LORA_TARGETS` (default: all of them) and
    :data:`LORA_EXTRA_TARGETS`."""
    train_norms: bool = False
    """Also train the RMSNorm gains (every ``*norm`` module, ``peft``'s ``modules_to_save``: 2·L + 1 vectors of
    size d, ~0.03% of the demo model). The final norm's gain sets how far apart the frozen head can push the
    logits; a short-trained base has a small one, and adapters alone then cannot make any prediction confident
    (measured on the demo model: log p(EOS) stuck at −1.63 where full fine-tuning reaches −0.01)."""

    def __post_init__(self) -> None:
        require(self.rank >= 0, f"lora.rank must be >= 0 (0 = full fine-tuning), got {self.rank}")
        require(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, f"lora.dropout must lie in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS + LORA_EXTRA_TARGETS]
        require(bool(self.targets) and not unknown, f"lora.targets {unknown or self.targets} must be a non-empty "
                f"subset of {list(LORA_TARGETS + LORA_EXTRA_TARGETS)}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0
