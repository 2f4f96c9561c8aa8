"""The run's data, prepared before the trainer is built: the trainer consumes, it does not build.

:func:`prepare_run_data` (called by :func:`sumi.train.train`, so by ``sumi train`` and the demo) builds the packed
shards from ``data.mixture`` when ``data.shard_dir`` does not exist yet (rank 0 builds, the others wait), and
returns the config with the model's vocabulary size and special ids taken from the shards' tokenizer.
:func:`packed_loader_factory` then reads those shards, each rank its own rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch.distributed as dist

from sumi.config import SumiConfig
from sumi.data import Manifest, MixtureSpec, PackedLoader, build_shards
from sumi.errors import ConfigError
from sumi.tokenizer import load_tokenizer
from sumi.train.config import RunConfig
from sumi.train.parallelize import init_distributed

logger = logging.getLogger(__name__)

LoaderFactory = Callable[[str, int, int, int, int], Any]
"""(split, per-rank batch size B, seed, rank, world size) → an iterable of LongTensor [B, seq_len] with
state_dict(): rank r's rows [r·B, (r+1)·B) of each global batch of B·world size rows, whose order must not
depend on the world size (as ``sumi.data.PackedLoader``'s)."""

SPECIAL_FIELDS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
"""Model config fields that must equal the shards' tokenizer."""


def prepare_run_data(cfg: RunConfig) -> RunConfig:
    """Make ``cfg``'s shards exist (building them from ``data.mixture`` if needed) and return ``cfg`` with the
    model's vocab size and special ids taken from the shards' tokenizer unless overridden (written into
    ``model.overrides``, so the config saved with each checkpoint rebuilds the model alone). Collective under
    torchrun: rank 0 builds, every rank waits for it."""
    data = cfg.data
    if not data.shard_dir:
        raise ConfigError("data.shard_dir is required: build shards with `sumi data build` and set "
                          "data.shard_dir=<dir> (or data.mixture=<mixture.yaml> to build them first)")
    if not Path(data.shard_dir).is_dir():
        if not data.mixture:
            raise ConfigError(f"data.shard_dir={data.shard_dir!r} does not exist; build it with "
                              "`sumi data build` or set data.mixture to build it here")
        if not data.tokenizer:
            raise ConfigError("building shards from data.mixture needs data.tokenizer")
        env = init_distributed(cfg.training.device)
        if env.is_main:
            spec = (MixtureSpec.from_dict(data.mixture) if isinstance(data.mixture, dict)
                    else MixtureSpec.from_yaml(data.mixture))
            build_shards(spec, load_tokenizer(data.tokenizer), data.shard_dir, seq_len=data.seq_len,
                         heldout_fraction=data.heldout_fraction, seed=cfg.training.seed)
        if dist.is_initialized():
            dist.barrier()
    return with_shard_vocab(cfg)


def shard_special_ids(shard_dir: str | Path) -> dict[str, int]:
    """The vocabulary size and special ids of the tokenizer a shard directory was built with (its manifest)."""
    tokenizer = Manifest.load(shard_dir).tokenizer
    return {key: int(tokenizer[key]) for key in SPECIAL_FIELDS}


def with_shard_vocab(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the model's vocab size and special ids from the shards' manifest unless overridden, and
    ``data.seq_len`` set to the shards' canvas length (the loader reads those canvases; the saved config says so)."""
    overrides = dict(cfg.model.overrides)
    data = cfg.data
    if cfg.data.shard_dir and Path(cfg.data.shard_dir, "manifest.json").is_file():
        manifest = Manifest.load(cfg.data.shard_dir)
        for key in SPECIAL_FIELDS:
            overrides.setdefault(key, int(manifest.tokenizer[key]))
        if manifest.seq_len != data.seq_len:
            logger.info("data.seq_len=%d taken from the shards (config said %d)", manifest.seq_len, data.seq_len)
            data = replace(data, seq_len=manifest.seq_len)
    return replace(cfg, model=replace(cfg.model, overrides=overrides), data=data)


def check_prepared(cfg: RunConfig, model_config: SumiConfig) -> None:
    """Refuse a config whose shards are missing or whose model disagrees with the shards' tokenizer."""
    if not cfg.data.shard_dir or not Path(cfg.data.shard_dir).is_dir():
        raise ConfigError(f"data.shard_dir={cfg.data.shard_dir!r} does not exist; build it with `sumi data build` "
                          "(or run through sumi.train.train / prepare_run_data, which builds it from data.mixture)")
    if not Path(cfg.data.shard_dir, "manifest.json").is_file():
        return  # PackedLoader reports the incomplete directory
    shards = shard_special_ids(cfg.data.shard_dir)
    differ = {key: (getattr(model_config, key), value) for key, value in shards.items()
              if getattr(model_config, key) != value and key not in cfg.model.overrides}
    if differ:
        raise ConfigError(f"the model config disagrees with the shards' tokenizer {differ} (model, shards); pass the "
                          "config through sumi.train.data.prepare_run_data, or set model.overrides explicitly")


def packed_loader_factory(shard_dir: str | Path, vocab_size: int | None = None) -> LoaderFactory:
    """Read ``sumi.data.PackedLoader`` shards; each rank reads only its own rows of every global batch.

    Train batches are shuffled and endless. Held-out batches are shuffled with the fixed evaluation seed (so the
    first batches sample all held-out documents, the same ones at every evaluation) and keep the last partial
    batch. Both splits are verified against their sha256 checksums when first opened; the held-out split, which
    is re-opened at every evaluation, is checked by size afterwards.
    """
    opened: set[str] = set()

    def make(split: str, batch_size: int, seed: int, rank: int, world_size: int):
        verify = "checksum" if split not in opened else "size"
        opened.add(split)
        if split == "train":
            return PackedLoader(shard_dir, split=split, batch_size=batch_size, seed=seed, rank=rank,
                                world_size=world_size, vocab_size=vocab_size, verify=verify)
        return PackedLoader(shard_dir, split=split, batch_size=batch_size, seed=seed, rank=rank,
                            world_size=world_size, drop_last=False, verify=verify, vocab_size=vocab_size)

    return make
