"""Fault injection on checkpoints and run folders: crafted pickles, flipped bytes, truncation, full disks,
re-runs, overwrites and converts that would destroy their own source. Every fault must end in a clear
SumiError (one CLI line, exit status 2) with nothing lost and no code run from a checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from sumi import safe_dcp
from sumi.cli import main as cli_main
from sumi.config import sumi_tiny
from sumi.convert import convert
from sumi.errors import CheckpointError, InputError
from sumi.release import Sumi
from sumi.train import Trainer, resolve_run_config
from sumi.train.checkpointing import Checkpointer
from sumi.train.metrics import read_metrics

ROOT = Path(__file__).parents[1]
SEQ_LEN = 32


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    from conftest import sample_texts

    from sumi.data import MixtureSpec, build_shards

    work = tmp_path_factory.mktemp("fault_shards")
    texts = sample_texts()
    with open(work / "docs.jsonl", "w") as f:
        for i in range(0, len(texts), 10):
            f.write(json.dumps({"text": " ".join(texts[i:i + 10])}) + "\n")
    spec = MixtureSpec.from_dict({"sources": [{"name": "g", "type": "jsonl", "path": str(work / "docs.jsonl")}]})
    build_shards(spec, tiny_tokenizer, work / "shards", seq_len=SEQ_LEN, heldout_fraction=0.1, seed=0,
                 show_progress=False)
    return work / "shards"


def run_args(shards: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.shard_dir={shards}", f"training.output_dir={out}", "training.steps=2", "training.log_every=1",
            "training.progress=false", "training.micro_batch_size=2", "schedule.warmup_steps=1",
            "checkpoint.every=1", "checkpoint.export=false", "training.eval_batches=1", *extra]


def trained_run(shards: Path, out: Path, *extra: str) -> Path:
    Trainer(resolve_run_config(None, run_args(shards, out, *extra))).fit()
    return out / "checkpoints"


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant_payload(step_dir: Path, marker: Path) -> None:
    """Replace .metadata by a pickle that runs code, and re-sign the checksums as an attacker would."""
    (step_dir / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    safe_dcp.write_checksums(step_dir)


def cli(*argv: str, capsys) -> tuple[int, str]:
    """Run ``sumi`` in this process; returns (exit status, the error line(s) on stderr, log lines excluded)."""
    code = cli_main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING ", "DEBUG "))]
    return code, "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------------------- security (7)
def test_crafted_metadata_never_runs_on_any_load_path(shards, tmp_path, capsys):
    root = trained_run(shards, tmp_path / "run")
    step = Checkpointer(root).latest()
    marker = tmp_path / "pwned"
    plant_payload(step, marker)

    with pytest.raises(CheckpointError, match="refusing to load global"):  # sumi convert (dcp -> release)
        convert(step, tmp_path / "out", config="sumi-tiny")
    code, err = cli("convert", str(step), str(tmp_path / "out2"), "--config", "sumi-tiny", capsys=capsys)
    assert code == 2 and "refusing to load global" in err and err.count("\n") == 1
    with pytest.raises(CheckpointError, match="refusing to load global"):  # --from megatron (torch_dist layout)
        convert(step, tmp_path / "out3", src_format="megatron", config="sumi-tiny")
    cfg = resolve_run_config(None, run_args(shards, tmp_path / "run"))
    with pytest.raises(CheckpointError, match="refusing to load global"):  # train --resume
        Trainer(cfg).resume(step)
    init = resolve_run_config(None, run_args(shards, tmp_path / "run2", f"model.init_from={step}"))
    with pytest.raises(CheckpointError, match="refusing to load global"):  # model.init_from
        Trainer(init)
    assert not marker.exists()


def test_crafted_non_tensor_entry_is_refused(tmp_path):
    """Optimizer hyper-parameters are stored as pickled bytes; a payload there must not run on resume."""
    marker = tmp_path / "pwned"
    model = Sumi.from_config(sumi_tiny(), seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    osd["param_groups"][0]["lr"] = Payload(marker)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp_path / "step-00000001")
    (tmp_path / "step-00000001" / "trainer_state.json").write_text(json.dumps(
        {"step": 1, "tokens_seen": 0, "scheduler": {}, "loader": {}, "noise_rng": "", "torch_rng": ""}))
    with pytest.raises(CheckpointError, match="cannot load training checkpoint"):
        Checkpointer(tmp_path).load(tmp_path / "step-00000001", model, optimizer)
    assert not marker.exists()


def test_metadata_pointing_outside_the_checkpoint_is_refused(shards, tmp_path):
    step = Checkpointer(trained_run(shards, tmp_path / "run")).latest()
    metadata = safe_dcp.read_metadata(step)
    for info in metadata.storage_data.values():
        info.relative_path = "../../../etc/passwd"
    with open(step / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    safe_dcp.write_checksums(step)
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        convert(step, tmp_path / "out", config="sumi-tiny")


# ---------------------------------------------------------------------------------------------- corruption (6, 10)
def flip(path: Path, offset: int = -64) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip_weights", "truncate_weights", "flip_metadata", "truncate_state",
                                    "garbage_state", "no_checksums_bad_state", "missing_data_file"])
def test_damaged_checkpoint_is_a_clear_error(shards, tmp_path, damage, capsys):
    root = trained_run(shards, tmp_path / "run")
    step = Checkpointer(root).latest()
    data = next(step.glob("*.distcp"))
    if damage == "flip_weights":
        flip(data)
    elif damage == "truncate_weights":
        data.write_bytes(data.read_bytes()[:1000])
    elif damage == "flip_metadata":
        flip(step / ".metadata", 40)
    elif damage == "truncate_state":
        state = step / "trainer_state.json"
        state.write_bytes(state.read_bytes()[:50])
    elif damage == "garbage_state":
        (step / "trainer_state.json").write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "no_checksums_bad_state":
        (step / "checksums.json").unlink()
        (step / "trainer_state.json").write_bytes(b"{\"step\": 1")
    elif damage == "missing_data_file":
        data.unlink()
    code, err = cli("train", *run_args(shards, tmp_path / "run", "training.steps=3"), "--resume", capsys=capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert any(word in err for word in ("checksum", "damaged", "truncated", "missing", "cannot load")), err


def test_resume_with_another_model_size_is_a_clear_error(shards, tmp_path, capsys):
    trained_run(shards, tmp_path / "run")
    code, err = cli("train", *run_args(shards, tmp_path / "run", "training.steps=3",
                                       "model.overrides.intermediate_size=96"), "--resume", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot load training checkpoint" in err, err


def test_heldout_shard_corruption_fails_at_start(shards, tmp_path, capsys):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    heldout = sorted(copy.glob("heldout*"))
    assert heldout, list(copy.iterdir())
    victim = next(p for p in heldout if p.suffix != ".npy" and p.stat().st_size > 8)
    flip(victim, 4)
    code, err = cli("train", *run_args(copy, tmp_path / "run"), capsys=capsys)
    assert code == 2 and "checksum" in err and not (tmp_path / "run" / "checkpoints").exists(), err


def test_empty_heldout_split_fails_before_training(tmp_path, tiny_tokenizer, capsys):
    from conftest import sample_texts

    from sumi.data import MixtureSpec, build_shards

    (tmp_path / "d.jsonl").write_text(json.dumps({"text": " ".join(sample_texts()[:40])}) + "\n")
    spec = MixtureSpec.from_dict({"sources": [{"name": "g", "type": "jsonl", "path": str(tmp_path / "d.jsonl")}]})
    build_shards(spec, tiny_tokenizer, tmp_path / "shards", seq_len=SEQ_LEN, heldout_fraction=0.0, seed=0,
                 show_progress=False)
    with pytest.raises(InputError, match="heldout"):
        Trainer(resolve_run_config(None, run_args(tmp_path / "shards", tmp_path / "run")))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_half_written_metrics_line_does_not_block_resume(shards, tmp_path, caplog):
    out = tmp_path / "run"
    trained_run(shards, out)
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "loss": 1.2')  # the process died mid-write
    Trainer(resolve_run_config(None, run_args(shards, out, "training.steps=3"))).fit(resume=True)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3]
    assert "damaged line" in caplog.text


# ---------------------------------------------------------------------------------------------- run folder (1, 5)
def test_rerun_into_an_existing_run_is_refused_and_overwrite_moves_it_aside(shards, tmp_path, capsys):
    out = tmp_path / "run"
    trained_run(shards, out)
    before = (out / "metrics.jsonl").read_bytes()
    step = Checkpointer(out / "checkpoints").latest()
    code, err = cli("train", *run_args(shards, out), capsys=capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out / "metrics.jsonl").read_bytes() == before and step.is_dir()
    code, err = cli("train", *run_args(shards, out), "--overwrite", capsys=capsys)
    assert code == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_bytes() == before
    assert (aside[0] / "checkpoints" / step.name / "checksums.json").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2]


def test_resume_flag_followed_by_an_override_is_not_a_folder(shards, tmp_path, capsys):
    out = tmp_path / "run"
    trained_run(shards, out)
    code, err = cli("train", *run_args(shards, out), "--resume", "training.steps=3", capsys=capsys)
    assert code == 0, err
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


@pytest.mark.slow
def test_second_trainer_on_a_locked_run_folder_gets_one_line(shards, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sumi.train.run_dir import RunLock; "
         f"lock = RunLock({str(out)!r}); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run([sys.executable, "-m", "sumi.cli", "train", *run_args(shards, out)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2, proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    trained_run(shards, out)  # the kernel dropped the dead holder's lock: the folder is usable again


# ---------------------------------------------------------------------------------------------- convert (3)
def test_convert_refuses_a_destination_that_holds_the_source(shards, tmp_path, capsys):
    out = tmp_path / "run"
    root = trained_run(shards, out)
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for dst in (out, tmp_path, root / "step-00000002" / "inner"):
        code, err = cli("convert", str(root), str(dst), "--force", "--config", "sumi-tiny", capsys=capsys)
        assert code == 2 and ("contains the source" in err or "inside the source" in err), err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing


def test_convert_force_replaces_only_after_success(shards, tmp_path, tiny_model_dir):
    root = trained_run(shards, tmp_path / "run")
    dst = tmp_path / "release"
    shutil.copytree(tiny_model_dir, dst)
    (dst / "notes.txt").write_text("mine")
    before = (dst / "model.safetensors").read_bytes()
    step = Checkpointer(root).latest()
    flip(next(step.glob("*.distcp")))  # the conversion fails on the checksum …
    with pytest.raises(CheckpointError, match="checksum"):
        convert(root, dst, config="sumi-tiny", overwrite=True)
    assert (dst / "model.safetensors").read_bytes() == before  # … and the old output is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release.")]


# ---------------------------------------------------------------------------------------------- full disk (2, 10)
@pytest.fixture
def small_disk(tmp_path):
    """A real 12 MiB tmpfs (root only); skipped with the reason where mounting is refused."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}); see test_disk_full_injected")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` until about ``leave`` bytes are free."""
    free = shutil.disk_usage(directory).free - leave
    if free > 0:
        with open(directory / "ballast", "wb") as f:
            f.write(b"\0" * free)


def test_save_pretrained_on_a_full_disk_keeps_the_old_weights(small_disk, tiny_model):
    model_dir = small_disk / "model"
    tiny_model.save_pretrained(model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    fill(small_disk, 64 * 1024)
    bigger = Sumi.from_config(sumi_tiny(), seed=1)
    with pytest.raises(CheckpointError, match="No space left on device"):
        bigger.save_pretrained(model_dir)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast", "model"]


def test_checkpoint_save_on_a_full_disk_is_one_line_and_resumable(shards, small_disk, capsys):
    out = small_disk / "run"
    trained_run(shards, out, "checkpoint.keep=1")
    good = Checkpointer(out / "checkpoints").latest()
    fill(small_disk, 16 * 1024)
    code, err = cli("train", *run_args(shards, out, "training.steps=4", "checkpoint.keep=1"), "--resume",
                    capsys=capsys)
    assert code == 2 and "No space left on device" in err and err.count("\n") == 1, err
    assert Checkpointer(out / "checkpoints").latest() == good
    assert not list((out / "checkpoints").glob(".tmp-*"))
    (small_disk / "ballast").unlink()
    code, err = cli("train", *run_args(shards, out, "training.steps=4", "checkpoint.keep=1"), "--resume",
                    capsys=capsys)
    assert code == 0, err


def test_disk_full_injected(tmp_path, tiny_model, monkeypatch):
    """ENOSPC from the OS, injected (runs everywhere, also where tmpfs cannot be mounted)."""
    import errno

    import safetensors.torch

    tiny_model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    monkeypatch.setattr("sumi.checkpoint.save_file", no_space)
    with pytest.raises(CheckpointError, match="No space left on device"):
        tiny_model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------------------------- Ctrl-C (10)
SIGINT_DURING_SAVE = """
import os, signal, sys
# A terminal's Ctrl-C reaches a Python with the default handler; a process started in the background by a
# non-interactive shell (a CI runner, `cmd &`) inherits SIGINT ignored, and would never see the interrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)
from torch.distributed.checkpoint import FileSystemWriter
real = FileSystemWriter.write_data
def write_then_interrupt(self, plan, planner):
    future = real(self, plan, planner)
    if "step-00000003" in str(self.path):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the checkpoint files are being written
    return future
FileSystemWriter.write_data = write_then_interrupt
from sumi.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_during_a_save_exits_130_and_keeps_the_last_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SIGINT_DURING_SAVE, "train",
                           *run_args(shards, out, "training.steps=4")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "sumi train: interrupted"
    assert "Traceback" not in proc.stderr
    assert Checkpointer(out / "checkpoints").latest().name == "step-00000002"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    Trainer(resolve_run_config(None, run_args(shards, out, "training.steps=4"))).fit(resume=True)
