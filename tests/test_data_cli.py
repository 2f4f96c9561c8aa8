"""`sumi tokenizer` and `sumi data` command lines, on tiny fixtures."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sumi.cli import main  # noqa: E402


def test_tokenizer_cli_train_encode_decode(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("In the beginning God created the heaven and the earth.\n" * 50, encoding="utf-8")
    (tmp_path / "mix.yaml").write_text("sources: [{name: c, path: c.txt}]\n")
    assert main(["tokenizer", "train", "--output", str(tmp_path / "tok"), "--vocab-size", "300",
                 "--mixture", str(tmp_path / "mix.yaml")]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "In the beginning", "--bos",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"][0] == 0 and out["num_tokens"] == len(out["ids"])
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path / "tok"), "--skip-special",
                 *map(str, out["ids"])]) == 0
    assert capsys.readouterr().out.strip() == "In the beginning"
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "missing"), "x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_data_cli_build_and_inspect(tmp_path, tiny_tokenizer, capsys):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "a.txt").write_text("And God said, Let there be light: and there was light.\n" * 8)
    (tmp_path / "mix.yaml").write_text("sources: [{name: a, path: a.txt, weight: 3}]\n")
    args = ["data", "build", "--mixture", str(tmp_path / "mix.yaml"), "--tokenizer", str(tmp_path / "tok"),
            "--output", str(tmp_path / "shards"), "--seq-len", "16", "--heldout", "0"]
    assert main(args) == 0
    assert "train:" in capsys.readouterr().out
    assert main(args) == 2  # refuses to overwrite without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "shards"), "--max-chars", "40"]) == 0
    text = capsys.readouterr().out
    assert "--- train canvas 0 (16 tokens) ---" in text and "And God said" in text
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
