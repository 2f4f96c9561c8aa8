"""Conversation data for supervised fine-tuning: records → chat-template ids → fixed-length SFT canvases.

A record is a chat (``{"messages": [{"role": ..., "content": ...}, ...]}``, roles system/user/assistant) or a
pair (``{"prompt": ..., "response": ...}``, optional ``"system"``), from a JSONL file or a Hugging Face dataset.
It is rendered with the tokenizer's chat template (:func:`sumi.chat.encode_chat`, ChatML by default) and every
assistant turn becomes one example: the conversation up to that turn's header is the **prompt**, the turn's
content and its closing ``<|im_end|>`` are the **response**.

The canvas of an example lays tokens out exactly as :func:`sumi.sampling.generate` does for that prompt with
``max_new_tokens = B`` (``sumi-model.md`` §4), B the response budget (``finetune.response_budget``, or all of
the canvas: B = C − P − 2)::

    position  0 … P−1      P … P+R−1        P+R … P+B−1       P+B   P+B+1   P+B+2 … C−1
              prompt       response         EOS fill          EOS   BOS     PAD (no position attends to it)
    target    no           yes              yes               no    no      no

Only target positions are noised and scored; the prompt and the anchor stay clean, as they are frozen at
generation. The fill after the response is EOS, scored like any other token (as LLaDA's SFT does), so the model
learns to end its answer and generation cuts at the first EOS or ``<|im_end|>``. The padding after the anchor is
masked out of attention (``attention_mask``), so every real position sees exactly the canvas ``generate`` builds
for this prompt and budget (``fit_canvas``), and no two conversations share a canvas.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sumi.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

ANCHOR_LENGTH = 2
"""EOS, BOS after the generation budget (``anchor_eosbos``)."""


@dataclass(frozen=True)
class SFTExample:
    """One assistant turn to learn: ``prompt_ids`` (BOS, history, the assistant header) and ``response_ids``
    (the turn's content and its closing end-of-turn token)."""

    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class SFTBatch:
    """A batch of SFT canvases, all [B, W]: clean ids, the positions that are noised and scored, and the key mask
    (False = padding after the anchor, which no position attends to). W ≤ C: the loader drops the padding columns
    that no row of the batch uses."""

    input_ids: torch.Tensor
    target_mask: torch.Tensor
    attention_mask: torch.Tensor | None = None

    @property
    def prompt_mask(self) -> torch.Tensor:
        """[B, C] bool: positions before the first target (the prompt, which classifier-free guidance drops)."""
        return prompt_mask(self.target_mask)


def prompt_mask(target_mask: torch.Tensor) -> torch.Tensor:
    """[B, C] bool: True before the first target position of each row."""
    return target_mask.long().cumsum(dim=1) == 0


# ------------------------------------------------------------------------------------------------ records
def messages_of(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """The conversation of one record (``messages``, or ``prompt``/``response`` with an optional ``system``)."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: a record must be a JSON object with 'messages' or 'prompt'/'response'")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        if not any(isinstance(m, Mapping) and m.get("role") == "assistant" for m in messages):
            raise InputError(f"{where}: the conversation has no assistant turn, so nothing to learn")
        return [dict(m) for m in messages]
    response = record.get("response", record.get("completion"))
    if "prompt" in record and response is not None:
        if not isinstance(record["prompt"], str) or not isinstance(response, str):
            raise InputError(f"{where}: 'prompt' and 'response' must be strings")
        turns = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return turns + [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": response}]
    raise InputError(f"{where}: a record needs 'messages' or 'prompt' and 'response' (got keys {sorted(record)})")


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(location, record) for every non-empty line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"fine-tuning data {path} does not exist; give a JSONL file of chats or prompt/response "
                          "pairs, or {type: hf, dataset: NAME}")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where} is not valid JSON: {exc}") from None


def read_hf(spec: Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
    """(location, record) of a Hugging Face dataset ``{type: hf, dataset, config?, split?}``."""
    from sumi.data.mixture import _offline

    name = spec.get("dataset")
    if not name:
        raise ConfigError("an hf fine-tuning source needs 'dataset' (a Hugging Face dataset name)")
    if _offline():
        raise ConfigError(f"the fine-tuning data is the Hugging Face dataset {name!r}, but this process is offline "
                          "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); download it, export it to JSONL and give "
                          "its path, or unset the offline variables")
    try:
        import datasets
    except ImportError:
        raise ConfigError("an hf fine-tuning source needs the `datasets` package; `pip install datasets`") from None
    try:
        rows = datasets.load_dataset(name, spec.get("config"), split=spec.get("split", "train"), streaming=True)
    except Exception as exc:  # network, auth, unknown name: the library's message says which
        raise InputError(f"could not open the Hugging Face dataset {name!r} ({exc})") from exc
    for i, record in enumerate(rows):
        yield f"{name} record {i}", record


def read_records(source: str | Path | Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
    """Records of a JSONL path or of a mapping ``{type: jsonl, path}`` / ``{type: hf, dataset, ...}``."""
    if isinstance(source, Mapping):
        kind = source.get("type", "hf" if "dataset" in source else "jsonl")
        if kind == "hf":
            return read_hf(source)
        if kind == "jsonl" and source.get("path"):
            return read_jsonl(source["path"])
        raise ConfigError(f"fine-tuning data {dict(source)!r}: use a JSONL path, {{type: jsonl, path: FILE}} or "
                          "{type: hf, dataset: NAME}")
    return read_jsonl(source)


# ------------------------------------------------------------------------------------------------ rendering
def examples_of(messages: list[dict[str, str]], tokenizer) -> list[SFTExample]:
    """One :class:`SFTExample` per assistant turn: the prompt is everything rendered before the turn."""
    from sumi.chat import encode_chat

    encoding = encode_chat(messages, tokenizer)
    ids = encoding.input_ids
    return [SFTExample(prompt_ids=ids[:start], response_ids=ids[start:end]) for start, end in encoding.assistant_spans]


def prompt_ids_of(messages: list[dict[str, str]], tokenizer) -> list[int]:
    """Ids of a conversation that ends with a user turn, followed by the assistant header (what to generate
    from); the same ids a training example of the next assistant turn has as its prompt."""
    from sumi.chat import encode_chat

    return encode_chat(messages, tokenizer, add_generation_prompt=True).input_ids


def canvas_of(example: SFTExample, canvas_length: int, *, eos_id: int, bos_id: int, pad_id: int = 0,
              response_budget: int = 0, truncate: bool = False, where: str = ""
              ) -> tuple[list[int], list[bool], list[bool]]:
    """(ids [C], target [C], attend [C]) of an example in the layout of the module docstring.

    A response longer than the budget (or than the canvas allows) raises :class:`InputError`, unless
    ``truncate``: then it is cut to fit. The prompt is never cut: one that leaves no room is always an error.
    """
    p, r = len(example.prompt_ids), len(example.response_ids)
    room = canvas_length - ANCHOR_LENGTH - p
    budget = min(response_budget, room) if response_budget else room
    if room < 1 or (response_budget and room < response_budget):
        raise InputError(f"{where}the prompt has {p} tokens, which leaves no room for a response budget of "
                         f"{response_budget or 1} on a canvas of {canvas_length}; raise finetune.canvas_length or "
                         "shorten the conversation")
    response = example.response_ids
    if r > budget:
        if not truncate:
            limit = (f"the response budget of {response_budget}" if response_budget else
                     f"the canvas of {canvas_length} with the prompt ({p} tokens) and the EOS/BOS anchor")
            raise InputError(f"{where}the response ({r} tokens) does not fit {limit}; raise finetune.canvas_length"
                             " or finetune.response_budget, shorten the data, or set finetune.truncate=true")
        response = response[:budget]
    pad = canvas_length - p - budget - ANCHOR_LENGTH
    ids = example.prompt_ids + response + [eos_id] * (budget - len(response)) + [eos_id, bos_id] + [pad_id] * pad
    target = [False] * p + [True] * budget + [False] * (ANCHOR_LENGTH + pad)
    attend = [True] * (canvas_length - pad) + [False] * pad
    return ids, target, attend


class SFTDataset:
    """All SFT canvases of a source, rendered once: ``input_ids``, ``target_mask``, ``attention_mask`` [N, C]."""

    def __init__(self, input_ids: torch.Tensor, target_mask: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> None:
        self.input_ids = input_ids
        self.target_mask = target_mask
        self.attention_mask = torch.ones_like(target_mask) if attention_mask is None else attention_mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, dict]], tokenizer, canvas_length: int, *,
                     response_budget: int = 0, truncate: bool = False, limit: int = 0) -> SFTDataset:
        """Render records (``(location, record)`` pairs) into canvases; ``limit`` > 0 keeps the first ones."""
        rows, targets, attends, truncated = [], [], [], 0
        for where, record in records:
            for example in examples_of(messages_of(record, where), tokenizer):
                ids, target, attend = canvas_of(
                    example, canvas_length, eos_id=tokenizer.eos_token_id, bos_id=tokenizer.bos_token_id,
                    pad_id=tokenizer.pad_token_id, response_budget=response_budget, truncate=truncate,
                    where=f"{where}: ")
                truncated += len(example.response_ids) > sum(target)
                rows.append(ids)
                targets.append(target)
                attends.append(attend)
            if limit and len(rows) >= limit:
                break
        if not rows:
            raise InputError("the fine-tuning data holds no assistant turns")
        if truncated:
            logger.warning("%d of %d responses were cut to fit", truncated, len(rows))
        return cls(torch.tensor(rows, dtype=torch.long), torch.tensor(targets, dtype=torch.bool),
                   torch.tensor(attends, dtype=torch.bool))

    def subset(self, rows: torch.Tensor) -> SFTDataset:
        return SFTDataset(self.input_ids[rows], self.target_mask[rows], self.attention_mask[rows])

    def split(self, heldout_fraction: float, seed: int) -> tuple[SFTDataset, SFTDataset]:
        """(train, held-out): a seeded random share of the canvases (at least one) is held out."""
        n = len(self)
        count = max(1, round(n * heldout_fraction))
        if count >= n:
            raise InputError(f"{n} fine-tuning examples are too few to hold out {count}; add data or give "
                             "finetune.heldout_data")
        order = torch.from_numpy(np.random.default_rng([seed, 7]).permutation(n))
        return self.subset(order[count:].sort().values), self.subset(order[:count].sort().values)


class SFTLoader:
    """Endless shuffled :class:`SFTBatch` es of a dataset for one rank, exactly resumable (``state_dict``).

    The order follows :class:`sumi.data.PackedLoader`: epoch e reads ``permutation_{(seed, e)}(N)`` in global
    batches of ``batch_size × world_size`` rows, of which rank r takes rows ``[r·B, (r+1)·B)``; so the global batch
    does not depend on how it is split across ranks. With ``drop_last=False`` (held-out) the last batch wraps
    around to the start of the epoch.
    """

    def __init__(self, dataset: SFTDataset, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, "
                              f"{world_size}")
        n, self.global_batch = len(dataset), batch_size * world_size
        if drop_last and n < self.global_batch:
            raise InputError(f"{n} fine-tuning examples are fewer than one global batch of {self.global_batch}; "
                             "lower training.micro_batch_size or add data")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.shuffle, self.drop_last = rank, shuffle, drop_last
        self.steps_per_epoch = n // self.global_batch if drop_last else -(-n // self.global_batch)
        self.epoch, self.step = 0, 0

    def __iter__(self):
        return self

    def __next__(self) -> SFTBatch:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        start = self.step * self.global_batch + self.rank * self.batch_size
        rows = torch.from_numpy(order[np.arange(start, start + self.batch_size) % n])
        self.step += 1
        # Padding sits after every row's anchor and no position attends to it, so the columns no row of this
        # batch uses are dropped: the same logits and loss at every real position, for less compute.
        width = int(self.dataset.attention_mask[rows].sum(dim=1).max())
        return SFTBatch(self.dataset.input_ids[rows, :width], self.dataset.target_mask[rows, :width],
                        self.dataset.attention_mask[rows, :width])

    def state_dict(self) -> dict:
        """The read position (the same on every rank: positions are global)."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "num_examples": len(self.dataset),
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("num_examples", len(self.dataset)),
                          ("global_batch", self.global_batch)):
            if state.get(key) != mine:
                raise ConfigError(f"cannot resume: the saved fine-tuning loader had {key}={state.get(key)!r} but "
                                  f"this one has {mine!r}; resume with the same data, seed and global batch")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
