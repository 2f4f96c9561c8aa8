"""The model as a user holds it: :class:`Sumi` = the plain :class:`~sumi.model.SumiForMaskGeneration` plus the
release conveniences ``save_pretrained``, ``from_pretrained`` and ``generate``.

They live here, above the model, checkpoint and sampling packages, so that ``sumi/model.py`` imports none of
them (``docs/design.md`` §6): the network stays a plain ``nn.Module`` that training wraps and samplers call
through its forward. ``sumi.load_model`` returns a :class:`Sumi`; anything that accepts the plain model accepts
it (it *is* one, with the same parameters and state-dict names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sumi.checkpoint import load_model as _load_checkpoint
from sumi.checkpoint import save_model
from sumi.model import SumiForMaskGeneration


class ReleaseMixin:
    """``save_pretrained`` / ``generate`` for a Sumi network (mixed into :class:`Sumi` and the transformers
    class of :mod:`sumi.hf`)."""

    def save_pretrained(self, directory: str | Path, *, max_shard_size: int | str = "5GB",
                        dtype: torch.dtype | None = None) -> Path:
        """Write the release layout (config.json, generation_config.json, safetensors); see
        :func:`sumi.checkpoint.save_model`."""
        return save_model(self, directory, max_shard_size=max_shard_size, dtype=dtype)

    generation_config = None
    """A ``transformers.GenerationConfig`` whose explicit fields override the release's generate defaults (set
    from ``generation_config.json`` by :func:`sumi.load_model`)."""

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 generation_config=None, **kwargs: Any):
        """The released model's ``generate`` (``sequences`` with the prompt, ``canvas``) with transformers'
        conventions; see :mod:`sumi.generation`. :func:`sumi.generate` is sumi's richer sampling API."""
        # Imported here, not at the top: sumi.generation needs transformers, which sumi.load_model should not load.
        from sumi.generation import release_generate

        return release_generate(self, input_ids, attention_mask, generation_config, **kwargs)

    @classmethod
    def can_generate(cls) -> bool:
        return True


class Sumi(ReleaseMixin, SumiForMaskGeneration):
    """A Sumi model with the release conveniences; build with :meth:`from_config` or :meth:`from_pretrained`."""

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None, *, strict: bool = True) -> Sumi:
        """Load a model directory in the release layout (:func:`sumi.checkpoint.load_model`)."""
        return _load_checkpoint(path, device=device, dtype=dtype, strict=strict, model_class=cls)


def load_model(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
               *, strict: bool = True) -> Sumi:
    """``sumi.load_model``: a model directory (safetensors, single or sharded) as a :class:`Sumi`."""
    return Sumi.from_pretrained(path, device=device, dtype=dtype, strict=strict)
