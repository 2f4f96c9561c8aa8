"""Hostile command-line input: every case ends in exit status 2 with one ``sumi CMD: error: …`` line and no
traceback (non-UTF-8 files, non-finite and huge numbers, negative seeds, wrong types, bogus devices, unwritable
outputs checked before the work, absurd or mismatched configs, index files pointing outside the model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sumi.checkpoint import load_model
from sumi.cli import main as cli_main
from sumi.errors import CheckpointError, ConfigError

BAD_BYTES = b"\xff\xfe hello \x80\x81"


def error_line(capsys, argv: list[str]) -> str:
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sumi ")]
    assert code == 2 and len(errors) == 1, (code, err)
    return errors[0]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.txt").write_bytes(BAD_BYTES)
    (tmp_path / "bad.yaml").write_bytes(b"model:\n  preset: \xff\n")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    (tmp_path / "mix.yaml").write_text(f"sources:\n  - name: s\n    type: jsonl\n    path: {tmp_path / 'bad.jsonl'}\n")
    return tmp_path


@pytest.mark.parametrize("override, message", [
    ("training.steps=.inf", "finite"), ("training.steps=1e400", "finite"), ("optimizer.lr=.nan", "finite"),
    ("training.seed=-1", "[0, 2**63)"), ("training.seed=1180591620717411303424", "too large"),
    ("training.seed=2**70", "integer"), ("optimizer.betas=[0.9,0.95,0.99]", "list of 2"),
    ("optimizer.lr=[1]", "number"), ("training.device=bogus", "use auto, cpu or cuda"),
    ("model.overrides.num_hidden_layers=1000000000", "exceeds the limit"),
    ("model.overrides.max_position_embeddings=4000000", "exceeds the limit"),
    ("model.overrides.tie_word_embeddings=3", "true or false"), ("training=5", "mapping"),
])
def test_bad_overrides(capsys, override, message):
    assert message in error_line(capsys, ["train", override, "--print-config"])


def test_non_utf8_files_everywhere(capsys, bad_files, tiny_model_dir, tmp_path):
    assert "not UTF-8" in error_line(capsys, ["train", "--config", str(bad_files / "bad.yaml"), "--print-config"])
    assert "not UTF-8" in error_line(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt-file",
                                              str(bad_files / "bad.txt"), "--max-new-tokens", "2", "--steps", "1"])
    assert "not UTF-8" in error_line(capsys, ["score", "--model", str(tiny_model_dir), "--file",
                                              str(bad_files / "bad.txt"), "-K", "2"])
    line = error_line(capsys, ["data", "build", "--mixture", str(bad_files / "mix.yaml"), "--tokenizer",
                               str(tiny_model_dir), "--output", str(tmp_path / "shards")])
    assert "bad.jsonl:2" in line
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_bytes(b'{"vocab_size": "\xff"}')
    assert "config.json" in error_line(capsys, ["info", str(model)])
    with pytest.raises(CheckpointError):
        load_model(model)


def test_numbers_devices_and_outputs(capsys, tiny_model_dir, tmp_path):
    gen = ["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "4"]
    assert "at most" in error_line(capsys, gen + ["--steps", "1000000000000"])
    assert "[0, 2**63)" in error_line(capsys, gen + ["--seed", str(2**70)])
    assert "[0, 2**63)" in error_line(capsys, gen + ["--seed", "-1"])
    assert "unknown device" in error_line(capsys, gen + ["--device", "bogus"])
    blocked = tmp_path / "file"
    blocked.write_text("x")  # a file where a directory is needed: nothing can be written below it
    assert "cannot write" in error_line(capsys, gen + ["--trajectory", str(blocked / "t.html")])
    assert "exceeds" in error_line(capsys, ["score", "--model", str(tiny_model_dir), "--text", "hi",
                                            "-K", "100000000000"])
    assert "cannot write" in error_line(capsys, ["convert", str(tiny_model_dir), str(blocked / "out")])
    assert "cannot write" in error_line(capsys, ["probe", "--model", str(tiny_model_dir), "--out",
                                                 str(blocked / "p"), "--sweep", "none"])
    assert "training.output_dir" in error_line(capsys, ["train", f"training.output_dir={blocked / 'run'}",
                                                        f"data.shard_dir={tmp_path}"])


@pytest.mark.parametrize("edit, message", [
    ({"num_hidden_layers": 1_000_000_000}, "exceeds the limit"),
    ({"max_position_embeddings": 4_000_000}, "exceeds the limit"),
    ({"num_hidden_layers": 3}, "weights hold 2 layers"),
    ({"hidden_size": 128, "head_dim": 32}, "config.json implies"),
    ({"vocab_size": 1024}, "config.json implies"),
])
def test_absurd_or_mismatched_config_fails_before_allocating(tiny_model_dir, tmp_path, edit, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises((CheckpointError, ConfigError), match=message):
        load_model(model)


def test_index_pointing_outside_the_model_folder(tiny_model, tmp_path):
    model = tmp_path / "model"
    tiny_model.save_pretrained(model, max_shard_size=200_000)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(model / index["weight_map"][name], outside)
    index["weight_map"][name] = "../elsewhere.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        load_model(model)
    assert Path(outside).is_file()


def test_megatron_tracker_with_garbage_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "latest_checkpointed_iteration.txt").write_bytes(b"\xff\xfe12")
    line = error_line(capsys, ["convert", str(tmp_path), str(tmp_path.parent / "out"), "--from", "megatron",
                               "--config", "sumi-tiny"])
    assert "iteration number" in line
