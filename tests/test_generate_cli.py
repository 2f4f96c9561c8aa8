"""``sumi generate`` on the self-contained tiny model directory: text, JSON, HTML replay, GIF, live view."""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import subprocess

import pytest
import torch

from sumi.cli import main

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tiny model runs fastest on one thread (see tests/test_sampling.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["generate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_output(tiny_model_dir, tiny_tokenizer, capsys):
    code, out, _ = run_cli(capsys, "--model", str(tiny_model_dir), "--prompt", "In the beginning", "--prompt",
                           "And", "--max-new-tokens", "10", "--canvas-length", "32", "--seed", "0", "--json",
                           "--sampler", "ancestral", "--top-k", "50")
    assert code == 0
    record = json.loads(out)
    assert [s["prompt"] for s in record["samples"]] == ["In the beginning", "And"]
    for sample in record["samples"]:
        assert sample["num_tokens"] == len(sample["token_ids"]) <= 10
        assert sample["text"] == tiny_tokenizer.decode(sample["token_ids"], skip_special_tokens=True)
    assert record["steps_run"] == 10 and record["options"]["sampler"] == "ancestral"
    code, again, _ = run_cli(capsys, "--model", str(tiny_model_dir), "--prompt", "In the beginning", "--prompt",
                             "And", "--max-new-tokens", "10", "--canvas-length", "32", "--seed", "0", "--json",
                             "--sampler", "ancestral", "--top-k", "50")
    assert [s["token_ids"] for s in json.loads(again)["samples"]] == [s["token_ids"] for s in record["samples"]]


def test_plain_text_show_self_correct_and_sliding(tiny_model_dir, capsys, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("And God said", encoding="utf-8")
    code, out, err = run_cli(capsys, "--model", str(tiny_model_dir), "--prompt-file", str(prompt),
                             "--max-new-tokens", "6", "--canvas-length", "24", "--seed", "1", "--show",
                             "--self-correct", "3", "--freeze", "5=40", "--sampler", "adaptive",
                             "--tokens-per-step", "1")
    assert code == 0 and out.startswith("And God said") and "step 6/6" in err
    code, out, _ = run_cli(capsys, "--model", str(tiny_model_dir), "--max-new-tokens", "40", "--canvas-length",
                           "16", "--sliding", "--context-length", "4", "--sampler", "greedy", "--json", "--no-trim")
    assert code == 0 and json.loads(out)["samples"][0]["num_tokens"] == 40


def test_bad_options_exit_2(tiny_model_dir, capsys):
    code, _, err = run_cli(capsys, "--model", str(tiny_model_dir), "--prompt", "x", "--top-p", "1.5")
    assert code == 2 and "top_p must lie in (0, 1]" in err
    code, _, err = run_cli(capsys, "--model", str(tiny_model_dir), "--prompt", "x", "--max-new-tokens", "300")
    assert code == 2 and "does not fit the canvas" in err


@pytest.fixture(scope="module")
def replay(tiny_model_dir, tmp_path_factory):
    """An HTML replay and a GIF of one adaptive T=0 run, plus its JSON record."""
    directory = tmp_path_factory.mktemp("replay")
    page, gif = directory / "run.html", directory / "run.gif"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["generate", "--model", str(tiny_model_dir), "--prompt", "In the beginning God",
                     "--max-new-tokens", "12", "--canvas-length", "40", "--sampler", "adaptive", "--temperature", "0",
                     "--steps", "12", "--json", "--trajectory", str(page), "--gif", str(gif), "--seed", "3"])
    assert code == 0
    return page, gif, json.loads(stdout.getvalue())


def test_trajectory_html_embeds_final_text(replay, tiny_tokenizer):
    page, _, record = replay
    text = page.read_text(encoding="utf-8")
    final = record["samples"][0]["text"]
    assert f'<div id="final">{html.escape(final)}</div>' in text
    data = json.loads(re.search(r'<script id="trajectory-data" type="application/json">(.*?)</script>', text,
                                re.S).group(1))
    assert len(data["frames"]) == record["steps_run"] + 1
    prompt_len = data["prompt_length"]
    last = data["frames"][-1]["ids"]
    assert last[prompt_len:prompt_len + len(record["samples"][0]["token_ids"])] == record["samples"][0]["token_ids"]
    assert "http://" not in text and "https://" not in text  # self-contained


def test_gif_has_one_frame_per_step(replay):
    from PIL import Image

    _, gif, record = replay
    with Image.open(gif) as img:
        assert img.n_frames == record["steps_run"] + 1


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"headless Chromium not installed at {CHROMIUM} "
                    "(apt-get install -y chromium)")
def test_trajectory_renders_in_headless_chromium(replay, tiny_tokenizer):
    page, _, record = replay
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    canvas = re.search(r'<div id="canvas" data-rendered="1" data-frame="(\d+)">(.*?)</div>', dom, re.S)
    assert canvas is not None, "the replay script did not run"
    assert int(canvas.group(1)) == record["steps_run"]
    shown = "".join(html.unescape(s) for s in re.findall(r"<span[^>]*>(.*?)</span>", canvas.group(2), re.S))
    pieces = "".join(tiny_tokenizer.decode([t]) for t in record["samples"][0]["token_ids"])
    assert pieces in shown
    final = re.search(r'<div id="final">(.*?)</div>', dom, re.S).group(1)
    assert html.unescape(final) == record["samples"][0]["text"]
