"""The trainer in one process: config resolution, schedules, learning, resume, checkpoints, NaN stop, export."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sumi.errors import ConfigError
from sumi.train import RunConfig, Trainer, TrainingDivergedError, resolve_run_config
from sumi.train.checkpointing import Checkpointer
from sumi.train.metrics import TIMING_KEYS, read_metrics
from sumi.train.optim import LRSchedule, param_groups

GOLDEN = Path(__file__).parent / "golden" / "tiny_udlm_loss.json"
SEQ_LEN = 64


class CanvasLoader:
    """An endless, seeded, resumable loader over an in-memory [N, S] tensor (the PackedLoader contract: rank r
    gets rows [r·B, (r+1)·B) of each global batch of B·world_size rows)."""

    def __init__(self, canvases: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.canvases, self.batch_size, self.rank, self.world_size = canvases, batch_size, rank, world_size
        self.order = torch.randperm(len(canvases), generator=torch.Generator().manual_seed(seed))
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        first = self.position + self.rank * self.batch_size
        idx = [(first + i) % len(self.order) for i in range(self.batch_size)]
        self.position += self.batch_size * self.world_size
        return self.canvases[self.order[idx]]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


@pytest.fixture(scope="module")
def canvases(tiny_tokenizer):
    """Genesis (KJV) packed as ``BOS doc EOS BOS doc EOS …`` into [N, 64] canvases; the last 8 are held out."""
    from conftest import sample_texts

    texts = sample_texts()
    stream: list[int] = []
    for i in range(0, len(texts), 10):
        stream += tiny_tokenizer.encode(" ".join(texts[i:i + 10]), add_bos=True, add_eos=True)
    n = len(stream) // SEQ_LEN
    data = torch.tensor(stream[:n * SEQ_LEN]).view(n, SEQ_LEN)
    return {"train": data[:-8], "heldout": data[-8:]}



def factory(canvases):
    return lambda split, batch_size, seed, rank, world_size: CanvasLoader(canvases[split], batch_size, seed,
                                                                          rank, world_size)


def tiny_run(tmp_path, *overrides: str) -> RunConfig:
    base = ["training.steps=24", "training.micro_batch_size=8", "training.log_every=1", "training.progress=false",
            "schedule.warmup_steps=4", "optimizer.lr=3e-3", "checkpoint.every=0", "checkpoint.export=false",
            "training.eval_batches=1", f"training.output_dir={tmp_path}"]
    return resolve_run_config(None, base + list(overrides))


def losses(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(path)]


# ---------------------------------------------------------------------------------------------- config
def test_config_layers_defaults_file_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: sumi-tiny, overrides: {num_hidden_layers: 1}}\n"
                      "training: {steps: 50, micro_batch_size: 4}\noptimizer: {lr: 1.0e-3}\n")
    cfg = resolve_run_config(recipe, ["training.steps=7", "optimizer.betas=[0.8, 0.9]", "schedule.kind=cosine",
                                      "model.overrides.hidden_size=32", "schedule.warmup_steps=2"])
    assert cfg.training.steps == 7 and cfg.training.micro_batch_size == 4          # file, then override
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.optimizer.weight_decay == 0.1 and cfg.noise.per_token_fraction == 0.2  # defaults
    built = cfg.model.build()
    assert (built.num_hidden_layers, built.hidden_size, built.vocab_size) == (1, 32, 512)  # preset < file < cli
    again = RunConfig.from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    (["training.stepz=3"], "valid keys are: training.steps"),
    (["trianing.steps=3"], "valid keys are: model, data"),
    (["training.steps=abc"], "training.steps must be an integer"),
    (["training.steps=0"], "training.steps must be >= 1"),
    (["schedule.kind=linear"], "schedule.kind='linear'"),
    (["model.preset=sumi-99b"], "available presets"),
    (["model.overrides.hidden_sise=8"],
     "model.overrides on preset 'sumi-tiny': unknown config field(s) ['hidden_sise']; valid fields are"),
    (["training.compile=maybe"], "training.compile must be true or false"),
    (["noise.per_token_fraction=1.5"], "noise.per_token_fraction must lie in [0, 1]"),
    (["steps"], "section.key=value"),
])
def test_config_errors_are_actionable(override, message):
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        resolve_run_config(None, override)


def test_recipes_resolve():
    root = Path(__file__).parents[1] / "configs"
    for name in ("tiny-cpu", "sumi-7b-stage1", "sumi-7b-stage2", "sumi-7b-stage3"):
        cfg = resolve_run_config(root / f"{name}.yaml")
        assert cfg.optimizer.betas == (0.9, 0.95)
    stage1, stage3 = (resolve_run_config(root / f"sumi-7b-stage{i}.yaml") for i in (1, 3))
    assert stage1.model.build().num_parameters()["total"] == 7_767_543_808
    # 1.3T tokens at 4608 x 1184 per step; stage 3 runs at 4864.
    tokens = stage1.training.steps * 4608 * 1184
    assert abs(tokens - 1.3e12) / 1.3e12 < 0.01
    assert stage3.data.seq_len == 4864


# ---------------------------------------------------------------------------------------------- optimizer
def test_wsd_and_cosine_schedules():
    wsd = LRSchedule(peak_lr=1.0, total_steps=100, kind="wsd", warmup_steps=10, decay_fraction=0.2, min_lr=0.1)
    assert wsd(0) == pytest.approx(0.1) and wsd(9) == pytest.approx(1.0)
    assert wsd(50) == 1.0 and wsd(79) == 1.0                      # stable until the last 20 steps
    assert wsd(89) == pytest.approx(0.55) and wsd(99) == pytest.approx(0.1)
    cos = LRSchedule(peak_lr=1.0, total_steps=101, kind="cosine", warmup_steps=0, min_lr=0.0)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_on_matrices_only(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    _, no_decay = param_groups(tiny_model, 0.1, decay_embeddings=False)
    assert any(p is tiny_model.lm_head.weight for p in no_decay["params"])


# ---------------------------------------------------------------------------------------------- learning
def test_loss_decreases_and_matches_golden_curve(tmp_path, canvases):
    trainer = Trainer(tiny_run(tmp_path), loader_factory=factory(canvases))
    # Learning is judged on the held-out NELBO before and after, a paired comparison (same rows, same noise):
    # single-batch training losses swing by ±30% with the batch's noise levels.
    before = trainer.evaluate()
    result = trainer.fit()
    curve = [r["loss"] for r in result.history if "loss" in r]
    assert len(curve) == 24
    assert math.isfinite(result.heldout_nelbo) and result.heldout_nelbo < before - 0.5
    if os.environ.get("SUMI_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"steps": 24, "loss": curve}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["loss"]
    torch.testing.assert_close(torch.tensor(curve), torch.tensor(golden), rtol=1e-4, atol=0,
                               msg="the tiny preset's loss curve drifted; if intended, regenerate with "
                                   "SUMI_UPDATE_GOLDEN=1 pytest tests/test_train.py")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_ar_baseline_trains(tmp_path, canvases):
    trainer = Trainer(tiny_run(tmp_path, "model.causal=true", "training.steps=16"), loader_factory=factory(canvases))
    assert trainer.model.config.is_causal
    result = trainer.fit()
    curve = [r["loss"] for r in result.history if "loss" in r]
    assert "kl" not in result.history[0] and curve[-1] < 0.85 * curve[0]
    assert result.heldout_nelbo < math.log(512)  # exact NLL below the uniform guess


# ---------------------------------------------------------------------------------------------- resume
def test_resume_reproduces_the_uninterrupted_curve_bitwise(tmp_path, canvases):
    full = Trainer(tiny_run(tmp_path / "full", "training.steps=8", "checkpoint.every=4"),
                   loader_factory=factory(canvases)).fit()
    Trainer(tiny_run(tmp_path / "cut", "training.steps=8", "checkpoint.every=4"),
            loader_factory=factory(canvases)).fit()
    # Forget everything after step 4 as if the process had died there, then resume.
    ckpts = Checkpointer(tmp_path / "cut" / "checkpoints")
    (ckpts.root / "latest").write_text("step-00000004")
    resumed = Trainer(tiny_run(tmp_path / "cut", "training.steps=8", "checkpoint.every=4"),
                      loader_factory=factory(canvases))
    resumed.fit(resume=True)
    assert losses(tmp_path / "full" / "metrics.jsonl") == losses(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if "loss" in r] == list(range(1, 9))
    assert full.steps == 8


def test_interrupted_save_keeps_last_good_checkpoint(tmp_path, canvases, monkeypatch):
    cfg = tiny_run(tmp_path, "training.steps=3", "schedule.warmup_steps=1")
    trainer = Trainer(cfg, loader_factory=factory(canvases))
    trainer.train_step()
    good = trainer.save_checkpoint()
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()

    import torch.distributed.checkpoint as dcp

    real_save = dcp.save

    def dying_save(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)  # the files land in the temp dir …
        raise KeyboardInterrupt("killed mid-save")     # … and the process dies before the rename

    monkeypatch.setattr(dcp, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000002").exists()  # Ctrl-C removes its partial save
    assert trainer.checkpointer.latest() == good
    fresh = Trainer(tiny_run(tmp_path, "training.steps=3", "schedule.warmup_steps=1"), loader_factory=factory(canvases))
    assert fresh.resume() and fresh.step == 1
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    fresh.train_step()
    (tmp_path / "checkpoints" / ".tmp-step-00000099").mkdir()  # what a SIGKILL mid-save leaves
    fresh.save_checkpoint()  # the next save clears the stale temp dir
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_nan_loss_stops_with_the_step_and_keeps_checkpoint(tmp_path, canvases):
    trainer = Trainer(tiny_run(tmp_path, "training.steps=10", "checkpoint.every=2"), loader_factory=factory(canvases))

    def poison(module, args, output):
        return output * float("nan") if trainer.step >= 3 else output

    trainer.model.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match="non-finite loss at step 4"):
        trainer.fit()
    latest = trainer.checkpointer.latest()
    assert latest.name == "step-00000002"
    fresh = Trainer(tiny_run(tmp_path, "training.steps=10"), loader_factory=factory(canvases))
    assert fresh.resume() and fresh.step == 2
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())


def test_saved_config_takes_seq_len_and_special_ids_from_the_shards(tmp_path, tiny_tokenizer):
    from conftest import sample_texts

    from sumi.data import MixtureSpec, build_shards
    from sumi.train.data import with_shard_vocab

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts()[:40]))
    spec = MixtureSpec.from_dict({"sources": [{"name": "kjv", "type": "jsonl", "path": str(docs)}]})
    build_shards(spec, tiny_tokenizer, tmp_path / "shards", seq_len=32, heldout_fraction=0.1, show_progress=False,
                 num_workers=1)
    cfg = with_shard_vocab(resolve_run_config(None, [f"data.shard_dir={tmp_path / 'shards'}"]))
    assert cfg.data.seq_len == 32  # was the default 1184 in config.yaml while the canvases held 32
    assert cfg.model.overrides["vocab_size"] == tiny_tokenizer.vocab_size


# ---------------------------------------------------------------------------------------------- export
def test_export_loads_with_same_logits(tmp_path, canvases, tiny_tokenizer):
    from sumi.checkpoint import load_model

    trainer = Trainer(tiny_run(tmp_path, "training.steps=2", "schedule.warmup_steps=1", "checkpoint.export=true"),
                      loader_factory=factory(canvases), tokenizer=tiny_tokenizer)
    result = trainer.fit()
    loaded = load_model(result.model_dir).eval()
    assert (result.model_dir / "tokenizer.json").is_file()
    tokenizer_config = json.loads((result.model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == loaded.config.max_position_embeddings
    x = canvases["heldout"][:2]
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, trainer.model(x).logits, rtol=0, atol=0)


def test_time_limit_stops_early_and_still_finishes_the_run(tmp_path, canvases):
    result = Trainer(tiny_run(tmp_path, "training.time_limit_minutes=1e-6", "checkpoint.export=true"),
                     loader_factory=factory(canvases)).fit()
    assert result.steps == 1 and result.heldout_nelbo is not None
    assert (tmp_path / "checkpoints" / "step-00000001").is_dir() and (result.model_dir / "config.json").is_file()


def test_activation_checkpointing_gives_the_same_curve(tmp_path, canvases):
    plain = Trainer(tiny_run(tmp_path / "a", "training.steps=3", "schedule.warmup_steps=1"),
                    loader_factory=factory(canvases)).fit()
    ac = Trainer(tiny_run(tmp_path / "b", "training.steps=3", "schedule.warmup_steps=1",
                          "training.activation_checkpointing=true"), loader_factory=factory(canvases))
    assert ac.model.model.layers[0].forward.__name__ == "forward" and "forward" in vars(ac.model.model.layers[0])
    result = ac.fit()
    torch.testing.assert_close(torch.tensor([r["loss"] for r in result.history if "loss" in r]),
                               torch.tensor([r["loss"] for r in plain.history if "loss" in r]), rtol=1e-6, atol=0)
    assert set(ac.model.state_dict()) == set(Trainer(tiny_run(tmp_path / "c"), loader_factory=factory(
        canvases)).model.state_dict())  # release names unchanged


def test_init_from_checkpoint_or_export_loads_weights_only(tmp_path, canvases):
    first = Trainer(tiny_run(tmp_path / "one", "training.steps=2", "schedule.warmup_steps=1",
                             "checkpoint.export=true"), loader_factory=factory(canvases))
    result = first.fit()
    trained = first.model.state_dict()
    for source in (tmp_path / "one" / "checkpoints", result.model_dir):
        second = Trainer(tiny_run(tmp_path / "two", f"model.init_from={source}"), loader_factory=factory(canvases))
        assert second.step == 0 and second.scheduler.step_count == 0
        for name, value in second.model.state_dict().items():
            assert torch.equal(value, trained[name]), (source, name)
    with pytest.raises(ConfigError, match="does not match the configured model"):
        Trainer(tiny_run(tmp_path / "three", f"model.init_from={result.model_dir}", "model.overrides.hidden_size=32",
                         "model.overrides.head_dim=8"), loader_factory=factory(canvases))


def test_parallel_layout_resolution_and_errors():
    from sumi.config import sumi_tiny
    from sumi.train.parallelize import Layout
    from sumi.train.tensor_parallel import check_tensor_parallel

    layout = Layout.resolve("fsdp", 16, replicate=2, tensor=4)
    assert (layout.replicate, layout.shard, layout.tensor, layout.data_size) == (2, 2, 4, 4)
    assert [layout.data_rank(r) for r in (0, 3, 4, 15)] == [0, 0, 1, 3]  # a TP group shares its rows
    assert Layout.resolve("auto", 1) == Layout()
    with pytest.raises(ConfigError, match="not divisible"):
        Layout.resolve("fsdp", 6, replicate=4)
    with pytest.raises(ConfigError, match="parallelism=fsdp"):
        Layout.resolve("ddp", 4, tensor=2)
    with pytest.raises(ConfigError, match="num_key_value_heads=2"):
        check_tensor_parallel(sumi_tiny(), 4)
    for bad in ("training.tensor_parallel=0", "training.activation_checkpointing_mode=some"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            resolve_run_config(None, [bad])


def test_optional_loggers_warn_when_their_package_is_missing(tmp_path, canvases, caplog, monkeypatch):
    import builtins
    import logging

    from sumi.train.metrics import MetricsLogger

    with pytest.raises(ConfigError, match="training.loggers has unknown"):
        tiny_run(tmp_path, "training.loggers=tensorbord")
    real_import = builtins.__import__

    def without(name, *args, **kwargs):  # the packages are absent on some machines: make it so on all
        if name in ("wandb", "torch.utils.tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with caplog.at_level(logging.WARNING, logger="sumi.train.metrics"):
        log = MetricsLogger(tmp_path / "m" / "metrics.jsonl", loggers=["tensorboard", "wandb"])
        log.log({"step": 1, "loss": 1.0})
        log.close()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "pip install tensorboard" in warned and "pip install wandb" in warned
    assert (tmp_path / "m" / "metrics.jsonl").read_text().count("\n") == 1  # the JSONL log is still written
    assert tiny_run(tmp_path, "training.loggers=tensorboard, wandb").training.logger_names == ["tensorboard", "wandb"]
