"""The lm-eval backend end to end on a local task (multiple choice, rolling perplexity, generation), through
``lm_eval.simple_evaluate`` in-process and through ``sumi eval`` in a subprocess (started first, run in parallel)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TASK_DIR = Path(__file__).parent.parent / "examples" / "lm_eval_task"  # the offline task docs/evaluation.md runs
TASKS = ["sumi_tiny_mc", "sumi_tiny_ppl", "sumi_tiny_gen"]
MODEL_ARGS = "num_timesteps=4,canvas_length=64,show_progress=False"


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir, tmp_path_factory):
    """`sumi eval` in a subprocess, started as soon as the module's first test asks for it."""
    out = tmp_path_factory.mktemp("lm_eval_out")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # device=cpu in --model_args (documented) and no --device: once a TypeError (device given twice).
    cmd = [sys.executable, "-m", "sumi.cli", "eval", "--model_args",
           f"pretrained={tiny_model_dir},{MODEL_ARGS},device=cpu", "--tasks", "sumi_tiny_mc,sumi_tiny_ppl",
           "--include_path", str(TASK_DIR), "--output_path", str(out), "--batch_size", "2"]
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()


@pytest.mark.slow
def test_simple_evaluate_local_tasks(cli_run, tiny_model_dir, tiny_tokenizer):
    import lm_eval
    from lm_eval.api.registry import model_registry
    from lm_eval.tasks import TaskManager

    import sumi
    import sumi.integrations.lm_eval  # noqa: F401  (registers model="sumi")
    from sumi.eval.nelbo import score

    assert "sumi" in model_registry and "hf" in model_registry  # registered without hiding the built-ins
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    res = lm_eval.simple_evaluate(model="sumi", model_args=f"pretrained={tiny_model_dir},{MODEL_ARGS}",
                                  tasks=TASKS, task_manager=tm, log_samples=True, batch_size=2)
    results = res["results"]
    assert 0 <= results["sumi_tiny_mc"]["acc,none"] <= 1
    assert 0 < results["sumi_tiny_ppl"]["bits_per_byte,none"] < 20
    assert results["sumi_tiny_gen"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)

    model = sumi.load_model(tiny_model_dir)
    kw = dict(num_timesteps=4, canvas_length=64, truncation="left")
    # loglikelihood = −NELBO of the continuation (same estimator, same seed), is_greedy a bool.
    mc = res["samples"]["sumi_tiny_mc"][0]
    doc = mc["doc"]
    (loglik, greedy), = mc["resps"][0]
    expected = score(model, tiny_tokenizer, doc["question"], continuation=doc["choices"][0], **kw)
    assert loglik == pytest.approx(-expected.total_nats, rel=1e-5) and isinstance(greedy, bool)
    # Rolling: a text that fits one window is the whole-text NELBO without the closing EOS; a longer one is
    # split into windows that score every token once.
    docs = {s["doc"]["text"]: s for s in res["samples"]["sumi_tiny_ppl"]}
    short = docs["Let the earth bring forth grass."]
    rolled = short["resps"][0][0]
    whole = score(model, tiny_tokenizer, "Let the earth bring forth grass.", add_eos=False, **kw)
    assert rolled == pytest.approx(-whole.total_nats, rel=1e-5)
    long_text = max(docs, key=len)
    assert len(tiny_tokenizer.encode(long_text)) > 64  # really needs several windows
    assert docs[long_text]["resps"][0][0] < 0
    # Generation: the sampler's text cut at the stop strings, the same whatever shares the batch.
    from sumi.eval.lm_eval_backend import SumiLM

    class Request:
        def __init__(self, *args):
            self.args = args

    gen = res["samples"]["sumi_tiny_gen"]
    lm = SumiLM(pretrained=str(tiny_model_dir), num_timesteps=4, canvas_length=64, show_progress=False)
    kwargs = {"until": [".", "\n"], "max_gen_toks": 6}
    alone = [lm.generate_until([Request(s["doc"]["question"], kwargs)])[0] for s in gen]
    assert [s["resps"][0][0] for s in gen] == alone
    for text in alone:
        assert "." not in text and "\n" not in text


@pytest.mark.slow
def test_sumi_eval_cli_runs_lm_eval(cli_run):
    proc, out = cli_run
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "CUDA" not in stderr and "cuda" not in stderr  # nobody asked for CUDA: no warning about it
    assert "sumi_tiny_mc" in stdout and "bits_per_byte" in stdout  # lm-eval's own results table
    (result_file,) = list(out.rglob("results_*.json"))
    results = json.loads(result_file.read_text())["results"]
    assert set(results) == {"sumi_tiny_mc", "sumi_tiny_ppl"}


def test_lm_eval_argv_and_bad_model_args(tmp_path, tiny_model_dir):
    from sumi.commands.eval import lm_eval_argv
    from sumi.errors import CheckpointError, ConfigError
    from sumi.eval.lm_eval_backend import SumiLM

    assert lm_eval_argv(["--tasks", "x"], False) == ["run", "--model", "sumi", "--tasks", "x", "--device", "cpu"]
    assert lm_eval_argv(["--tasks", "x"], True)[-2:] == ["--device", "cuda"]
    assert lm_eval_argv(["run", "--model", "hf", "--device=mps"]) == ["run", "--model", "hf", "--device=mps"]
    assert lm_eval_argv(["--model_args", "pretrained=d,device=cpu"], True) == [
        "run", "--model", "sumi", "--model_args", "pretrained=d,device=cpu"]
    assert lm_eval_argv(["ls", "tasks"]) == ["ls", "tasks"]
    # model_args win over lm-eval's own settings (which always carry device, default cuda:0).
    lm = SumiLM.create_from_arg_string(f"pretrained={tiny_model_dir},device=cpu,show_progress=False",
                                       {"device": "cuda:0", "batch_size": 3, "max_batch_size": None})
    assert lm.device.type == "cpu" and lm.batch_size == 3
    with pytest.raises(CheckpointError, match="not a sumi model directory"):
        SumiLM(pretrained=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown sumi model_args"):
        SumiLM(pretrained=str(tiny_model_dir), num_stepz=3)
    with pytest.raises(ConfigError, match="num_timesteps"):
        SumiLM(pretrained=str(tiny_model_dir), num_timesteps=0)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["sumi first", "lm_eval first"])
def test_registration_is_an_explicit_lazy_import(order):
    """`import sumi` alone registers nothing; `import sumi.integrations.lm_eval` registers the backend lazily
    (the backend module is not imported) without hiding lm-eval's built-in models."""
    imports = "import sumi; import lm_eval.api.registry as r" if order == "sumi first" else \
        "import lm_eval.api.registry as r; import sumi"
    code = (f"{imports}; import sys; before = 'sumi' in r.model_registry; import sumi.integrations.lm_eval; "
            "print(before, 'sumi' in r.model_registry, 'hf' in r.model_registry, "
            "'sumi.eval.lm_eval_backend' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "True", "False"], out.stderr[-2000:]
