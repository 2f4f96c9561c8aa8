"""The README's Python example runs as written (documentation that cannot silently rot)."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README should show a Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    out, model = namespace["out"], namespace["model"]
    assert out.logits.shape == (2, 64, 512) and out.loss.item() > 0
    assert (tmp_path / "my-model" / "model.safetensors").exists() and model.config.vocab_size == 512
