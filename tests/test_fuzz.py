"""Property-based fuzzing (hypothesis, derandomized so CI is repeatable; bounded example counts):

- ``sumi train`` overrides over the real config keys with hostile YAML values, and ``sumi generate`` / ``score``
  / ``tokenizer`` arguments with hostile numbers: the exit status is 0 or 2, stderr never holds a traceback;
- ``SamplingConfig`` from arbitrary keyword values: it builds or raises a SumiError, nothing else;
- the HTTP server (in process, its lifespan running) with arbitrary JSON bodies over the completion fields,
  raw bytes and other routes: never a 5xx, always an OpenAI-style error body on 4xx.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sumi.cli import main as cli_main  # noqa: E402
from sumi.errors import SumiError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


# ---------------------------------------------------------------------------------------------- values
HOSTILE_SCALARS = [".inf", "-.inf", ".nan", "1e400", "-1e400", "2**70", str(2**70), str(-(2**70)), "-1", "0", "1",
                   "3", "1.5", "1e3", "true", "null", "~", "[]", "{}", "[1, 2, 3]", "[0.9, 0.95, 0.99]", "[0.9]",
                   "{a: 1}", "'x'", "é", "\U0001f600", "", "0x10", "1_000", "!!python/object:os.system x",
                   "&a [*a]", "'\\ud800'", "9" * 500]
yaml_values = st.one_of(st.sampled_from(HOSTILE_SCALARS), st.integers().map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.text(max_size=12).filter(lambda s: "\x00" not in s))


def _run_config_keys() -> list[str]:
    from sumi.train.config import RunConfig

    keys = []
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                    type(getattr(RunConfig(), section.name))):
            keys.append(f"{section.name}.{f.name}")
    return keys + ["model.overrides.num_hidden_layers", "model.overrides.max_position_embeddings",
                   "model.overrides.hidden_size", "model.overrides.vocab_size", "model.overrides.rope_parameters",
                   "model.overrides.tie_word_embeddings", "model.overrides.head_dim", "nope.key", "training"]


def assert_clean_exit(argv: list[str], capsys) -> int:
    try:
        code = cli_main(argv)
    except SystemExit as exc:  # argparse rejects a malformed flag value: usage plus one error line, status 2
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if code == 2:
        assert [line for line in err.splitlines() if line.startswith("sumi ")], (argv, err[-500:])
    return code


# ---------------------------------------------------------------------------------------------- CLI
@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(_run_config_keys()), yaml_values), min_size=1, max_size=4))
def test_train_overrides_fuzz(overrides, capsys):
    _count("train overrides")
    argv = ["train", *[f"{k}={v}" for k, v in overrides], "--print-config"]
    assert_clean_exit(argv, capsys)


INT_FLAGS = ["--steps", "--max-new-tokens", "--canvas-length", "--top-k", "--tokens-per-step", "--seed",
             "--context-length", "--denoise-end", "--self-correct"]
FLOAT_FLAGS = ["--temperature", "--top-p", "--min-log-snr", "--max-log-snr"]
NUMBERS = ["-1", "0", "1", "2", "3", "1e12", "nan", "inf", "-inf", "2**70", str(2**70), "99999999999999999999",
           "abc", "", "1.5", "-0", "0x10", "１"]


@settings(FUZZ, max_examples=60)
@given(flags=st.lists(st.tuples(st.sampled_from(INT_FLAGS + FLOAT_FLAGS + ["--device", "--sampler", "--freeze",
                                                                           "--stop", "--prompt"]),
                                st.sampled_from(NUMBERS + ["cpu", "bogus", "cuda:7", "0=1", "5=99999", "é"])),
                      max_size=4))
def test_generate_arguments_fuzz(flags, tiny_model_dir, capsys):
    _count("generate arguments")
    argv = ["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--steps", "2"]
    for flag, value in flags:
        if flag == "--steps" and value.isdigit() and int(value) > 8:
            value = "8"  # valid but slow: the fuzz is about bad input, not long runs
        argv += [flag, value]
    assert_clean_exit(argv, capsys)


@settings(FUZZ, max_examples=40)
@given(k=st.sampled_from(NUMBERS), seed=st.sampled_from(NUMBERS), text=st.text(max_size=20))
def test_score_arguments_fuzz(k, seed, text, tiny_model_dir, capsys):
    _count("score arguments")
    if k.isdigit() and int(k) > 8:
        k = "4"
    assert_clean_exit(["score", "--model", str(tiny_model_dir), "--text", text or "x", "-K", k, "--seed", seed,
                       "--canvas-length", "32", "--no-progress"], capsys)


@FUZZ
@given(options=st.dictionaries(
    st.sampled_from([f.name for f in dataclasses.fields(__import__("sumi.sampling.config", fromlist=["x"])
                                                        .SamplingConfig)]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
              st.lists(st.integers(), max_size=3)), max_size=5))
def test_sampling_config_fuzz(options):
    from sumi.sampling.config import SamplingConfig

    _count("SamplingConfig")
    try:
        SamplingConfig(**options)
    except SumiError:
        pass


# ---------------------------------------------------------------------------------------------- server
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                              st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
FIELDS = ["model", "prompt", "messages", "tokens", "add_special_tokens", "add_generation_prompt", "snapshots",
          "max_completion_tokens",
          "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
          "top_k", "sampler", "num_denoising_steps", "tokens_per_step", "canvas_length", "schedule", "anchor_eosbos",
          "logprobs", "echo", "best_of", "suffix", "presence_penalty", "frequency_penalty", "logit_bias", "user",
          "unknown_field"]
good_values = {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bogus"]),
                                                            "content": json_values}), max_size=3),
               "tokens": st.lists(st.integers(-5, 2**70), max_size=4),
               "prompt": st.one_of(st.text(max_size=30), st.lists(st.integers(0, 600), min_size=1, max_size=5)),
               "max_tokens": st.integers(-2, 10), "n": st.integers(-1, 3), "num_denoising_steps": st.integers(-1, 6),
               "canvas_length": st.integers(-1, 40), "stream": st.booleans(), "seed": st.integers(-5, 2**64),
               "sampler": st.sampled_from(["adaptive", "ancestral", "greedy", "psi", "threshold", "bogus"])}
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={name: st.one_of(good_values.get(name, json_values), json_values)
                                        for name in FIELDS}),
    json_values,
)


@pytest.fixture(scope="module")
def app_client(tiny_model_dir):
    from starlette.testclient import TestClient

    from sumi.checkpoint import resolve_model
    from sumi.serve import Limits, ServeConfig, create_app

    model, tokenizer = resolve_model(tiny_model_dir)
    config = ServeConfig(model_id="tiny", limits=Limits(max_tokens=8, max_steps=6, max_cost=4096),
                         batch_window_ms=0, allowed_hosts=("testserver",))
    with TestClient(create_app(model, tokenizer, config)) as client:
        yield client


def _check_response(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"]


ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]


@settings(FUZZ, max_examples=240)
@given(body=bodies, route=st.sampled_from(ROUTES))
def test_server_json_bodies_fuzz(app_client, body, route):
    _count("server JSON bodies")
    _check_response(app_client.post(route, content=json.dumps(body).encode()))


@settings(FUZZ, max_examples=60)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))),
       path=st.sampled_from(ROUTES + ["/v1/models", "/v1/models/x", "/health", "/metrics", "/nope"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_server_raw_requests_fuzz(app_client, raw, path, method):
    _count("server raw requests")
    _check_response(app_client.request(method, path, content=raw, headers={"Content-Type": "application/json"}))


def test_fuzz_report():
    """Prints how many examples each property ran (read by the issue's closing note)."""
    print("fuzz examples:", json.dumps(COUNTS))
