"""The training loop of ``sumi train``: UDLM (GIDD, uniform noise) or the AR baseline, on 1 CPU or N GPUs.

One optimizer step (``docs/design.md`` §2.5)::

    for each of grad_accum_steps micro-batches:
        x  = this rank's rows [rank·B, (rank+1)·B) of the global micro-batch, read from the loader  [B, S]
        t  ~ TimeSampler (per sequence, or per token for a share of sequences)                   [B, S]
        z  ~ q(· | x) uniform noise with α = 1 − t                                               [B, S]
        labels = x with PAD → −100 (input only, never a target)
        loss = model_loss(config, model(z).logits, z, labels, t) / accum; backward
    clip the global grad norm, AdamW step with lr from the schedule

Each rank reads and noises only its own rows. The data order is a keyed permutation evaluated per position and
each row's t / z come from a stream keyed by (seed, step, micro-batch, global row) (``sumi.train.noising``), so
nothing depends on the world size: one process with micro-batch 2B equals two with B (tested for 1, 2 and 4
ranks), and a run can resume on a different number of ranks. The AR baseline (``model.causal``) skips the
noise: loss = next-token CE.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sumi._io import check_writable, staged_directory
from sumi.checkpoint import output_errors, save_model
from sumi.diffusion import TimeSampler, uniform
from sumi.diffusion.loss import model_loss
from sumi.errors import CheckpointError, ConfigError, SumiError
from sumi.finetune.data import SFTBatch
from sumi.model import IGNORE_INDEX, SumiForMaskGeneration, SumiOutput
from sumi.tokenizer import load_tokenizer
from sumi.train.checkpointing import Checkpointer, decode_rng, encode_rng, load_model_weights
from sumi.train.config import RunConfig
from sumi.train.data import LoaderFactory, check_prepared, packed_loader_factory, prepare_run_data
from sumi.train.metrics import MetricsLogger, plot_loss_curve
from sumi.train.noising import noise_rows
from sumi.train.optim import LRSchedule, LRScheduler, build_optimizer
from sumi.train.parallelize import DistEnv, Layout, init_distributed, materialize_sharded, parallelize
from sumi.train.run_dir import check_run_dir, claim_run_dir

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "elbo", "kl", "is", "z_loss")
"""Scalars averaged over micro-batches and ranks into each metrics record."""


class TrainingDivergedError(SumiError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (on every rank)."""

    steps: int
    tokens: int
    final_loss: float
    heldout_nelbo: float | None
    output_dir: Path
    model_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Builds model, optimizer, schedule, loaders and checkpointer from a :class:`RunConfig`, then :meth:`fit`.

    The trainer consumes prepared data: shards that exist, and a model config whose vocabulary and special ids
    are the shards' (:func:`sumi.train.data.prepare_run_data` makes both true; :func:`train` calls it).

    Args:
        cfg: the resolved run configuration, prepared.
        loader_factory: overrides the packed-shard loader (tests, custom data); see :data:`LoaderFactory`.
        tokenizer: shipped with the exported model; default: ``data.tokenizer`` or the shard directory's.
    """

    def __init__(self, cfg: RunConfig, *, loader_factory: LoaderFactory | None = None, tokenizer=None) -> None:
        self.cfg = cfg
        self.env: DistEnv = init_distributed(cfg.training.device)
        self.out_dir = Path(cfg.training.output_dir)
        self.model_config = cfg.model.build()
        if loader_factory is None:  # the shards prepare_run_data built or found, read as they are
            check_prepared(cfg, self.model_config)
            loader_factory = packed_loader_factory(cfg.data.shard_dir, self.model_config.vocab_size)
        self.loader_factory = loader_factory
        self._tokenizer = tokenizer

        tc = cfg.training
        self.precision = tc.precision if tc.precision != "auto" else (
            "bf16" if self.env.device.type == "cuda" else "fp32")
        self.layout = Layout.resolve(tc.parallelism, self.env.world_size, tc.data_parallel_replicate,
                                     tc.tensor_parallel)
        parallelism = self.layout.data_parallel
        # Data-parallel coordinates: the ranks of one tensor-parallel group read the same rows.
        self.data_rank, self.data_size = self.layout.data_rank(self.env.rank), self.layout.data_size
        self.causal = self.model_config.is_causal
        # FSDP2 builds the model on the meta device and materialises only each rank's shard (a 7B model never
        # exists in full on one host); otherwise every rank builds identical full weights (same seed) that DDP
        # broadcasts. Both give exactly the single-process initialisation.
        meta_init = parallelism == "fsdp" and not cfg.model.init_from
        if meta_init:
            with torch.device("meta"):
                self.model = SumiForMaskGeneration(self.model_config)
        else:
            self.model = SumiForMaskGeneration.from_config(self.model_config, seed=cfg.model.init_seed)
            if cfg.model.init_from:
                self._init_from(cfg.model.init_from)
            self.model.to(self.env.device)
        self.model.set_attn_implementation(cfg.model.attn_implementation)
        if cfg.lora.enabled:  # base weights frozen, adapters trained (the optimizer sees trainable ones only)
            from sumi.finetune.lora import apply_lora

            self.model = apply_lora(self.model, cfg.lora, seed=cfg.model.init_seed)
        self.module = parallelize(
            self.model, self.env, self.layout, compile=tc.compile,
            activation_checkpointing=tc.activation_checkpointing and tc.activation_checkpointing_mode,
            bf16_params=self.precision == "bf16" and parallelism == "fsdp")
        if meta_init:
            materialize_sharded(self.model, self.env.device, cfg.model.init_seed)
        self.parallelism = parallelism
        self.grad_accum_steps = self._grad_accum_steps()
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.scheduler = LRScheduler(self.optimizer, LRSchedule.from_config(cfg.optimizer, cfg.schedule, tc.steps))
        self.time_sampler = TimeSampler(cfg.noise.min_log_snr, cfg.noise.max_log_snr, cfg.noise.per_token_fraction)
        self.noise = uniform(self.model_config.vocab_size)
        self.global_batch = tc.micro_batch_size * self.data_size
        self.train_loader = self._loader("train", tc.seed)
        # Open (and verify) the held-out split now: an empty or corrupt one fails here, not after training.
        self._loader("heldout", tc.eval_seed)
        self._train_iter: Iterator | None = None
        self.checkpointer = Checkpointer(self.out_dir / "checkpoints", keep=cfg.checkpoint.keep)
        self.step = 0
        self.tokens_seen = 0

    def _init_from(self, path: str) -> None:
        """Weights from a release-layout directory or a training checkpoint (before sharding; every rank)."""
        from sumi.checkpoint import is_model_dir, load_model

        path = Path(path)
        if (path / "latest").is_file():  # a checkpoints directory: its newest complete checkpoint
            path = Checkpointer(path).latest() or path
        if is_model_dir(path):
            source = load_model(path, dtype=torch.float32).state_dict()
            mine = self.model.state_dict()
            bad = [k for k in mine if k not in source or source[k].shape != mine[k].shape]
            if bad:
                raise ConfigError(f"model.init_from={path} does not match the configured model at {bad[:3]}; "
                                  "use the same architecture (model.preset / model.overrides)")
            self.model.load_state_dict(source)
        else:
            load_model_weights(path, self.model)
        logger.info("initialised the weights from %s", path)

    def _grad_accum_steps(self) -> int:
        tc = self.cfg.training
        if not tc.global_batch_size:
            return tc.grad_accum_steps
        per_micro = tc.micro_batch_size * self.data_size
        if tc.global_batch_size % per_micro:
            raise ConfigError(f"training.global_batch_size={tc.global_batch_size} is not a multiple of "
                              f"micro_batch_size × data-parallel ranks = {tc.micro_batch_size} × {self.data_size}; "
                              "change one of them")
        return tc.global_batch_size // per_micro

    # ------------------------------------------------------------------ data and noise
    def _loader(self, split: str, seed: int):
        return self.loader_factory(split, self.cfg.training.micro_batch_size, seed, self.data_rank,
                                   self.data_size)

    def _next_batch(self) -> torch.Tensor:
        if self._train_iter is None:
            self._train_iter = iter(self.train_loader)
        try:
            return next(self._train_iter)
        except StopIteration:  # an epoch ended: the loader reshuffles on the next pass
            self._train_iter = iter(self.train_loader)
            return next(self._train_iter)

    def make_inputs(self, batch: torch.Tensor | SFTBatch, key: tuple[int, ...],
                    per_token_fraction: float | None = None, prompt_drop: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(z, t, labels) on the device for this rank's rows [B, S]; t is None for the AR baseline.

        Row j of this rank is row ``r·B + j`` of the global micro-batch (r = the data-parallel rank), noised from
        the stream ``(*key, r·B + j)`` (see :mod:`sumi.train.noising`): the same noise whichever rank holds it. A
        fine-tuning batch (:class:`SFTBatch`) is noised and scored only at its targets (the response); the prompt
        and the anchor stay clean, and with ``finetune.prompt_drop`` a row's prompt is replaced by the
        unconditional canvas (guidance training; the draw has its own keyed stream).
        """
        target = None
        if isinstance(batch, SFTBatch):
            x, target = batch.input_ids.long(), batch.target_mask
            labels = x.masked_fill(~target, IGNORE_INDEX)
        else:  # PAD only right-pads a split's last canvas; it is input but never a target.
            x = batch.long()
            labels = x.masked_fill(x == self.model_config.pad_token_id, IGNORE_INDEX)
        dev = self.env.device
        labels = labels.to(dev, non_blocking=True)
        if self.causal:
            return x.to(dev, non_blocking=True), None, labels
        sampler = self.time_sampler if per_token_fraction is None else TimeSampler(
            self.time_sampler.min_log_snr, self.time_sampler.max_log_snr, per_token_fraction)
        first = self.data_rank * x.shape[0]
        keys = [(*key, first + j) for j in range(x.shape[0])]
        z, t = noise_rows(x, keys, sampler, self.noise)
        if target is not None:
            from sumi.sampling.guidance import drop_prompts

            drop = self.cfg.finetune.prompt_drop if prompt_drop is None else prompt_drop
            z = torch.where(target, z, drop_prompts(x, target, drop, self.model_config.pad_token_id, keys))
        return z.to(dev, non_blocking=True), t.to(dev, non_blocking=True), labels

    def _autocast(self):
        # Under FSDP2 the MixedPrecisionPolicy already computes in bf16 (parameters cast at all-gather).
        if self.precision == "bf16" and self.parallelism != "fsdp":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def key_mask(self, batch: torch.Tensor | SFTBatch) -> torch.Tensor | None:
        """[B, S] keys to attend to (a fine-tuning batch's padding after the anchor is masked), or None."""
        if isinstance(batch, SFTBatch) and batch.attention_mask is not None:
            return batch.attention_mask.to(self.env.device, non_blocking=True)
        return None

    def _forward(self, z: torch.Tensor, t: torch.Tensor | None, labels: torch.Tensor,
                 key_mask: torch.Tensor | None = None, scored_only: bool = False) -> SumiOutput:
        """The model's logits on z, then the one loss on them (``sumi.diffusion.loss.model_loss``).

        ``scored_only`` (fine-tuning batches): run the head and the loss only at the scored positions
        (``logits_at``), as one row [1, n]. The loss is a mean over scored tokens, so this is the same loss and
        gradient; it skips the head at the prompt, anchor and padding (the head is ~40% of the demo model's
        forward, and a short reply is a fifth of its canvas).
        """
        with self._autocast():
            if scored_only and t is not None:
                scored = labels != IGNORE_INDEX
                logits = self.module(z, attention_mask=key_mask, logits_at=scored, validate=False).logits[None]
                t = t.expand(z.shape) if t.dim() == 2 else t[:, None].expand(z.shape)
                z, labels, t = z[scored][None], labels[scored][None], t[scored][None]
            else:
                logits = self.module(z, attention_mask=key_mask, validate=False).logits
            loss, metrics = model_loss(self.model_config, logits, z, labels, t)
        return SumiOutput(logits=logits, loss=loss, metrics=metrics)

    # ------------------------------------------------------------------ reductions
    def _all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.env.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.env.world_size
        return values

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the record fields (loss, elbo, …, lr, grad_norm)."""
        self.module.train()
        lr = self.scheduler.apply()
        sums = torch.zeros(len(LOSS_KEYS), device=self.env.device)
        for micro in range(self.grad_accum_steps):
            batch = self._next_batch()
            z, t, labels = self.make_inputs(batch, (self.cfg.training.seed, self.step, micro))
            last = micro == self.grad_accum_steps - 1
            sync = nullcontext() if (last or self.parallelism != "ddp") else self.module.no_sync()
            with sync:
                out = self._forward(z, t, labels, self.key_mask(batch), isinstance(batch, SFTBatch))
                (out.loss / self.grad_accum_steps).backward()
            metrics = out.metrics
            sums += torch.stack([out.loss.detach().float()] + [
                metrics[k].float() if k in metrics else torch.zeros((), device=self.env.device)
                for k in LOSS_KEYS[1:]])
        means = self._all_reduce_mean(sums / self.grad_accum_steps).tolist()
        record = dict(zip(LOSS_KEYS, means))
        if self.causal:
            for key in ("kl", "is", "z_loss"):
                record.pop(key)
        if not all(math.isfinite(v) for v in record.values()):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(
                f"non-finite loss at step {self.step + 1} ({record}); stopping. The last good checkpoint is "
                f"kept in {self.checkpointer.root} (resume with --resume after lowering optimizer.lr or "
                "checking the data)")
        grad_norm = self._clip_grad_norm(self.cfg.optimizer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += self.global_batch * self.grad_accum_steps * labels.shape[1]
        record.update(lr=lr, grad_norm=grad_norm)
        return record

    def _clip_grad_norm(self, max_norm: float) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: the norm is a DTensor
            norm = norm.full_tensor()
        return float(norm)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Held-out NELBO (UDLM; nats/token) or exact NLL (AR): token-weighted mean of the ``elbo`` metric.

        Fixed (seeded, shuffled) held-out batches and a fixed noise seed, so every evaluation of a run sees the
        same x, z and t; t is one per sequence (the NELBO of a sequence is an expectation over one shared noise
        level).
        """
        tc = self.cfg.training
        self.module.eval()
        loader = iter(self._loader("heldout", tc.eval_seed))
        totals = torch.zeros(2, dtype=torch.float64, device=self.env.device)
        num_batches = min(tc.eval_batches, getattr(loader, "steps_per_epoch", tc.eval_batches))
        for index in range(num_batches):
            batch = next(loader)
            z, t, labels = self.make_inputs(batch, (tc.eval_seed, index), per_token_fraction=0.0, prompt_drop=0.0)
            out = self._forward(z, t, labels, self.key_mask(batch), isinstance(batch, SFTBatch))
            tokens = out.metrics["tokens"].double()
            totals += torch.stack([out.metrics["elbo"].double() * tokens, tokens])
        if self.env.distributed:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        self.module.train()
        elbo_sum, tokens = totals.tolist()
        if tokens == 0:
            raise ConfigError("the held-out split is empty; rebuild the shards with heldout_fraction > 0")
        return elbo_sum / tokens

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict[str, Any]:
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "scheduler": self.scheduler.state_dict(),
                 "loader": self.train_loader.state_dict(),
                 "torch_rng": encode_rng(torch.get_rng_state()), "world_size": self.env.world_size}
        if torch.cuda.is_available() and self.env.device.type == "cuda":
            state["cuda_rng"] = encode_rng(torch.cuda.get_rng_state(self.env.device))
        return state

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_loader.load_state_dict(state["loader"])
        self._train_iter = None  # the noise needs no state: it is keyed by (seed, step, micro-batch, row)
        torch.set_rng_state(decode_rng(state["torch_rng"]))
        if "cuda_rng" in state and self.env.device.type == "cuda":
            torch.cuda.set_rng_state(decode_rng(state["cuda_rng"]), self.env.device)

    def save_checkpoint(self) -> Path:
        return self.checkpointer.save(self.step, self.module, self.optimizer, self.trainer_state(),
                                      self.cfg.to_yaml())

    def resume(self, path: str | Path | bool = True) -> bool:
        """Restore from ``path`` (a step directory) or, with ``True``, the newest complete checkpoint."""
        if path is True:
            target = self.checkpointer.latest()
            if target is None:
                logger.info("no checkpoint under %s; starting from scratch", self.checkpointer.root)
                return False
        else:
            target = Path(path)
            if (target / "latest").is_file() or target.name == "checkpoints":
                target = Checkpointer(target).latest() or target
        state = self.checkpointer.load(target, self.module, self.optimizer)
        try:
            self.load_trainer_state(state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            if isinstance(exc, SumiError):
                raise
            raise CheckpointError(f"{target}/trainer_state.json does not fit this run ({type(exc).__name__}: "
                                  f"{exc}); it is damaged — resume from an earlier checkpoint") from None
        return True

    # ------------------------------------------------------------------ export
    def export(self, directory: str | Path) -> Path | None:
        """Collective: gather full weights and write the release layout (+ tokenizer) on rank 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        directory = Path(directory)
        if self.env.is_main:
            with torch.device("meta"):
                plain = SumiForMaskGeneration(self.model_config)
            if self.cfg.lora.enabled:  # adapters in PEFT's format next to the model, then merged into it
                from sumi.finetune.lora import apply_lora, merge, save_adapter

                plain = apply_lora(plain, self.cfg.lora)
                # Copies: merging adds B·A into the weights in place, and on CPU ``full`` shares the live storage.
                plain.load_state_dict({k: v.clone() for k, v in full.items()}, strict=True, assign=True)
                adapter = directory.parent / "adapter"
                with output_errors(adapter), staged_directory(adapter) as staging:
                    save_adapter(plain, staging)
                plain = merge(plain)
            else:
                plain.load_state_dict(full, strict=True, assign=True)
            tokenizer = self.tokenizer()
            # Weights and tokenizer are built aside and swapped in together: a failed export (full disk)
            # leaves the previous export whole.
            with output_errors(directory), staged_directory(directory) as staging:
                save_model(plain, staging)
                if tokenizer is not None:  # model_max_length = the positions this model has
                    tokenizer.save_pretrained(staging, model_max_length=self.model_config.max_position_embeddings)
            if tokenizer is None:
                logger.warning("no tokenizer known; %s has weights and config only", directory)
        if dist.is_initialized():
            dist.barrier()
        return directory

    def tokenizer(self):
        """The tokenizer to ship with the export: the given one, ``data.tokenizer``, or the shards' own."""
        if self._tokenizer is None:
            source = self.cfg.data.tokenizer or self.cfg.data.shard_dir
            if source:
                try:
                    self._tokenizer = load_tokenizer(source)
                except SumiError as exc:
                    logger.warning("cannot load the tokenizer %s: %s", source, exc)
        return self._tokenizer

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: str | Path | bool = False, *, overwrite: bool = False) -> TrainResult:
        """Train to ``training.steps``, evaluating, logging and checkpointing on the way; export at the end.

        The run folder is locked for the whole run (a second trainer there stops with a ConfigError). Without
        ``resume``, a folder holding an earlier run is refused, or with ``overwrite`` that run is moved aside.
        """
        lock = self._on_main(lambda: claim_run_dir(self.out_dir, resume=bool(resume), overwrite=overwrite))
        try:
            return self._fit(resume)
        finally:
            if lock is not None:
                lock.release()

    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0; a SumiError there is raised on every rank (none is left waiting in a collective)."""
        result, error = None, ""
        if self.env.is_main:
            try:
                result = fn()
            except SumiError as exc:
                if not self.env.distributed:
                    raise
                error = str(exc)
        if self.env.distributed:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error:
            raise ConfigError(error)
        return result

    def _fit(self, resume: str | Path | bool) -> TrainResult:
        tc, ck = self.cfg.training, self.cfg.checkpoint
        resumed = bool(resume) and self.resume(resume)
        main = self.env.is_main
        if main:
            self.cfg.save(self.out_dir / "config.yaml")
        log = MetricsLogger(self.out_dir / "metrics.jsonl", enabled=main, resume_step=self.step if resumed else None,
                            loggers=tc.logger_names, wandb_project=tc.wandb_project,
                            run_config=self.cfg.to_dict() if "wandb" in tc.logger_names else None)
        history: list[dict[str, Any]] = []
        bar = None
        if main and tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        start, start_tokens, last_record = time.perf_counter(), self.tokens_seen, {}
        heldout = None
        try:
            while self.step < tc.steps:
                record = self.train_step()
                last_record = record
                out_of_time = self._out_of_time(start)
                if out_of_time:
                    logger.warning("time limit of %.1f min reached at step %d of %d; finishing early",
                                   tc.time_limit_minutes, self.step, tc.steps)
                done = self.step == tc.steps or out_of_time
                if self.step % tc.log_every == 0 or done:
                    elapsed = time.perf_counter() - start
                    entry = {"step": self.step, **record, "tokens": self.tokens_seen,
                             "tokens_per_s": (self.tokens_seen - start_tokens) / max(elapsed, 1e-9),
                             "elapsed_s": elapsed}
                    log.log(entry)
                    history.append(entry)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}")
                if (tc.eval_every and self.step % tc.eval_every == 0) or done:
                    heldout = self.evaluate()
                    entry = {"step": self.step, "tokens": self.tokens_seen, "heldout_nelbo": heldout}
                    log.log(entry)
                    history.append(entry)
                    logger.info("step %d: held-out %s %.4f nats/token", self.step,
                                "NLL" if self.causal else "NELBO", heldout)
                if (ck.every and self.step % ck.every == 0) or done:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
                if out_of_time:
                    break
        finally:
            if bar is not None:
                bar.close()
            log.close()
        model_dir = None
        if ck.export:
            model_dir = self.export(self.out_dir / "model")
        if main:
            plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
        return TrainResult(steps=self.step, tokens=self.tokens_seen, final_loss=last_record.get("loss", math.nan),
                           heldout_nelbo=heldout, output_dir=self.out_dir, model_dir=model_dir, history=history)

    def _out_of_time(self, start: float) -> bool:
        limit = self.cfg.training.time_limit_minutes
        if not limit:
            return False
        flag = torch.tensor([float(time.perf_counter() - start > 60 * limit)], device=self.env.device)
        if self.env.distributed:  # every rank must stop at the same step
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: RunConfig, *, resume: str | Path | bool = False, overwrite: bool = False, **kwargs) -> TrainResult:
    """Build a :class:`Trainer`, fit, and tear down the process group.

    A run folder holding an earlier run is refused before anything is built (see :meth:`Trainer.fit`).
    """
    if int(os.environ.get("RANK", "0")) == 0:
        check_writable(cfg.training.output_dir, "training.output_dir")
        check_run_dir(cfg.training.output_dir, resume=bool(resume), overwrite=overwrite)
    if kwargs.get("loader_factory") is None:
        cfg = prepare_run_data(cfg)
    trainer = Trainer(cfg, **kwargs)
    try:
        return trainer.fit(resume=resume, overwrite=overwrite)
    finally:
        trainer.close()
