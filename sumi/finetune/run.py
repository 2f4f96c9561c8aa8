"""``sumi finetune``: the pretraining trainer on SFT canvases, from a base model directory.

Everything but the data is the trainer of ``sumi train`` — checkpoints and exact resume, DDP/FSDP2, metrics,
held-out NELBO (over response tokens), export — with three differences wired here:

* the architecture, special ids and tokenizer come from the base model (``model.init_from``, a release-layout
  directory); its config is written into ``model.overrides`` so a checkpoint's config rebuilds the model alone;
* batches are :class:`~sumi.finetune.data.SFTBatch` es (the trainer noises and scores their targets only);
* with ``lora.rank > 0`` the model is wrapped in PEFT adapters; the export writes ``<output_dir>/adapter`` (PEFT
  format) and the merged model ``<output_dir>/model``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import replace
from pathlib import Path

from sumi.errors import ConfigError
from sumi.finetune.data import SFTDataset, SFTLoader, read_records
from sumi.train.config import RunConfig

logger = logging.getLogger(__name__)

_NOT_ARCHITECTURE = ("extra", "architectures", "model_type", "dtype", "use_cache")


def base_model_dir(cfg: RunConfig) -> Path:
    from sumi.checkpoint import is_model_dir

    path = Path(cfg.model.init_from) if cfg.model.init_from else None
    if path is None or not is_model_dir(path):
        raise ConfigError(f"fine-tuning starts from a model directory: set model.init_from to one (config.json, "
                          f"safetensors and tokenizer files, e.g. runs/demo/model); got {cfg.model.init_from!r}")
    return path


def with_base_model(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the base model's architecture and special ids in ``model.overrides``."""
    from sumi.config import SumiConfig

    base = SumiConfig.from_json_file(base_model_dir(cfg))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in _NOT_ARCHITECTURE}
    fields["architectures"] = list(base.architectures)
    return replace(cfg, model=replace(cfg.model, overrides={**fields, **cfg.model.overrides}))


def sft_datasets(cfg: RunConfig, tokenizer) -> tuple[SFTDataset, SFTDataset]:
    """(train, held-out) canvases of ``finetune.data`` / ``finetune.heldout_data``."""
    ft = cfg.finetune
    if not ft.enabled:
        raise ConfigError("finetune.data is required: a JSONL file of chats ({\"messages\": [...]}) or "
                          "prompt/response pairs, or {type: hf, dataset: NAME}")
    if ft.canvas_length > cfg.model.build().max_position_embeddings:
        raise ConfigError(f"finetune.canvas_length={ft.canvas_length} exceeds the base model's "
                          f"max_position_embeddings={cfg.model.build().max_position_embeddings}")
    render = dict(tokenizer=tokenizer, canvas_length=ft.canvas_length, response_budget=ft.response_budget,
                  truncate=ft.truncate)
    train = SFTDataset.from_records(read_records(ft.data), limit=ft.max_examples, **render)
    if ft.heldout_data:
        return train, SFTDataset.from_records(read_records(ft.heldout_data), **render)
    return train.split(ft.heldout_fraction, cfg.training.seed)


def sft_loader_factory(train: SFTDataset, heldout: SFTDataset):
    """The trainer's ``loader_factory`` over rendered datasets (each rank reads its own rows)."""

    def make(split: str, batch_size: int, seed: int, rank: int, world_size: int):
        if split == "train":
            return SFTLoader(train, batch_size, seed=seed, rank=rank, world_size=world_size)
        return SFTLoader(heldout, batch_size, seed=seed, rank=rank, world_size=world_size, drop_last=False)

    return make


def build_finetune_trainer(cfg: RunConfig):
    """A :class:`~sumi.train.Trainer` for the fine-tuning run ``cfg`` (config resolved against the base)."""
    from sumi.tokenizer import load_tokenizer
    from sumi.train.trainer import Trainer

    cfg = with_base_model(cfg)
    base = base_model_dir(cfg)
    if not (base / "tokenizer.json").is_file():
        raise ConfigError(f"{base} holds no tokenizer.json; fine-tuning renders chats with the base model's "
                          "tokenizer")
    tokenizer = load_tokenizer(cfg.data.tokenizer or base)
    train, heldout = sft_datasets(cfg, tokenizer)
    logger.info("fine-tuning on %d examples (%d held out), canvas %d", len(train), len(heldout),
                cfg.finetune.canvas_length)
    return Trainer(cfg, loader_factory=sft_loader_factory(train, heldout), tokenizer=tokenizer)


def finetune(cfg: RunConfig, *, resume=False):
    """Fine-tune and export; returns the :class:`~sumi.train.TrainResult`."""
    trainer = build_finetune_trainer(cfg)
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.close()
