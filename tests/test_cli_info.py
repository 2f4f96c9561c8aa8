"""`sumi info`: resolved config and parameter counts as JSON; clean errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

from sumi.cli import main


def test_info_json_for_the_7b_preset(capsys):
    assert main(["info", "sumi-7b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == {"total": 7_767_543_808, "embedding": 821_477_376, "non_embedding": 6_946_066_432}
    assert info["config"]["num_key_value_heads"] == 8 and info["config"]["vocab_size"] == 100278


def test_info_on_a_model_directory_matches_the_actual_tensors(tiny_model_dir, capsys, tiny_model):
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == tiny_model.parameter_counts()
    assert tiny_model.num_parameters() == info["parameters"]["total"]  # an int, as transformers' models
    assert tiny_model.num_parameters(exclude_embeddings=True) == info["parameters"]["non_embedding"]
    assert info["source"] == str(tiny_model_dir)


def test_bad_argument_is_one_clear_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "sumi.cli", "info", "/no/such/dir"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "sumi info: error: '/no/such/dir' is neither a model directory nor a preset "
        "(sumi-7b, sumi-1b, sumi-160m, sumi-25m, sumi-tiny)"
    )


def test_python_dash_m_sumi_and_help_shows_defaults():
    proc = subprocess.run([sys.executable, "-m", "sumi", "generate", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    help_text = " ".join(proc.stdout.split())
    assert "--max-new-tokens MAX_NEW_TOKENS default: 128" in help_text
    assert "--min-log-snr MIN_LOG_SNR default: -9.0" in help_text and "(default: None)" not in help_text


def test_closed_pipe_exits_quietly():
    """`sumi info … | head`: the reader closes the pipe; no BrokenPipeError traceback, SIGPIPE's status."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before sumi writes anything
    proc = subprocess.run([sys.executable, "-m", "sumi", "info", "sumi-7b", "--json"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141
