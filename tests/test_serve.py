"""sumi serve: a real server process on 127.0.0.1, exercised with httpx and the official openai client."""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow  # every test talks to a `sumi serve` subprocess

API_KEY = "sk-test-sumi"
MAX_TOKENS_LIMIT = 48
MAX_REQUEST_BYTES = 4096
# Small, fast requests: the tiny model on a short canvas with few steps.
FAST = {"max_tokens": 8, "canvas_length": 24, "num_denoising_steps": 4}
STEPWISE = {"sampler": "adaptive", "tokens_per_step": 1}
"""A sampler that runs every one of its steps (sumi's default sampler may finish early)."""


@pytest.fixture(scope="module")
def server(tiny_model_dir, serve_process):
    """``sumi serve`` in a subprocess; yields its base URL; terminated (SIGTERM) at the end of the module."""
    with serve_process(tiny_model_dir, "--api-key", API_KEY, "--max-tokens-limit", str(MAX_TOKENS_LIMIT),
                       "--max-request-bytes", str(MAX_REQUEST_BYTES), "--batch-window-ms", "20", "--model-name",
                       "sumi-tiny", "--log-level", "warning", env={"OMP_NUM_THREADS": "2"}) as (base, *_):
        yield base


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def _expected_texts(model_dir, prompt: str, n: int, **options) -> list[str]:
    """What the library produces for the same request (the server must agree exactly)."""
    import sumi
    from sumi.sampling import generate

    model = sumi.load_model(model_dir)
    tokenizer = sumi.load_tokenizer(model_dir)
    ids = tokenizer.encode(prompt, add_bos=True)
    out = generate(model, [ids] * n, max_new_tokens=options.pop("max_tokens"), **options)
    return [tokenizer.decode(seq, skip_special_tokens=True) for seq in out.sequences]


def test_health_and_models(server, client):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"] == "sumi-tiny"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["sumi-tiny"]
    assert client.get("/v1/models/sumi-tiny").json()["id"] == "sumi-tiny"
    assert client.get("/v1/models/other").status_code == 404


def test_completion_matches_library(client, tiny_model_dir, tiny_tokenizer):
    prompt = "In the beginning God created"
    request = {"model": "sumi-tiny", "prompt": prompt, "n": 2, "seed": 1234, "temperature": 0, "sampler": "adaptive",
               "tokens_per_step": 2, **FAST}
    r = client.post("/v1/completions", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "sumi-tiny" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] in ("stop", "length") and c["logprobs"] is None for c in body["choices"])
    prompt_tokens = len(tiny_tokenizer.encode(prompt, add_bos=True))
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert 0 <= usage["completion_tokens"] <= 2 * FAST["max_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected = _expected_texts(tiny_model_dir, prompt, 2, seed=1234, temperature=0, sampler="adaptive",
                               tokens_per_step=2, **FAST)
    assert [c["text"] for c in body["choices"]] == expected
    again = client.post("/v1/completions", json=request).json()
    assert [c["text"] for c in again["choices"]] == expected  # seeded requests are reproducible


def test_batch_of_prompts_and_stop(client):
    """A seeded request runs alone, so the same request without ``stop`` gives the uncut texts: each stopped
    text must be its uncut text up to the first "e", reported as "stop" exactly when something was cut."""
    body = {"prompt": ["And God said", "Let there be"], "n": 2, "temperature": 0.7, "top_p": 0.9, "seed": 7, **FAST}
    whole = client.post("/v1/completions", json=body)
    r = client.post("/v1/completions", json={**body, "stop": ["e"]})
    assert r.status_code == 200 and whole.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    cut_any = False
    for c, full in zip(choices, whole.json()["choices"]):
        expected = full["text"].split("e")[0]
        assert c["text"] == expected
        cut = expected != full["text"]
        cut_any |= cut
        assert c["finish_reason"] == ("stop" if cut else full["finish_reason"])
    assert cut_any, "no completion contained the stop string; pick another seed so the cut is exercised"
    ids = client.post("/v1/completions", json={"prompt": [0, 70, 80, 90], "sampler": "greedy", **FAST})
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize(("payload", "status", "param"), [
    ({"prompt": "x", "max_tokens": MAX_TOKENS_LIMIT + 1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "sampler": "beam"}, 400, "sampler"),
    ({"prompt": "x", "num_denoising_steps": -3}, 400, "num_denoising_steps"),
    ({"prompt": "x", "stop": [1, 2]}, 400, "stop"),
    ({"prompt": "x", "logprobs": 3}, 400, "logprobs"),
    ({"prompt": "x", "frobnicate": True}, 400, "frobnicate"),
    ({"prompt": [[1, 2], [99999]]}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"max_tokens": 4}, 400, "prompt"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "word " * 40, "canvas_length": 16}, 400, "prompt"),
])
def test_bad_fields_are_4xx(client, payload, status, param):
    r = client.post("/v1/completions", json=payload)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_malformed_requests(server, client):
    bad_json = client.post("/v1/completions", content=b'{"prompt": "x",', headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    not_object = client.post("/v1/completions", json=["prompt"])
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["error"]["message"]
    big = client.post("/v1/completions", json={"prompt": "x" * (MAX_REQUEST_BYTES + 10)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert client.get("/v1/completions").status_code == 405
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(server + "/health").json()["status"] == "ok"  # still alive


def test_api_key_required(server):
    no_key = httpx.post(server + "/v1/completions", json={"prompt": "x", **FAST})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(server + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(server + "/health").status_code == 200  # health stays open for load balancers


def _sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_streaming_canvas(client):
    request = {"prompt": "In the beginning", "seed": 7, "temperature": 0.8, "n": 2, **FAST, **STEPWISE}
    with client.stream("POST", "/v1/completions", json={**request, "stream": True,
                                                        "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    steps = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is None]
    assert [c["choices"][0]["step"] for c in steps] == list(range(FAST["num_denoising_steps"]))
    assert all(len(c["choices"]) == 2 and c["choices"][0]["text"] == "" for c in steps)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert sorted(c["choices"][0]["index"] for c in finals) == [0, 1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    final_texts = {c["choices"][0]["index"]: c["choices"][0]["text"] for c in finals}
    # the last canvas is the final text, and the stream equals the same seeded request without streaming
    assert [steps[-1]["choices"][i]["canvas"] for i in (0, 1)] == [final_texts[0], final_texts[1]]
    plain = client.post("/v1/completions", json=request).json()
    assert [c["text"] for c in plain["choices"]] == [final_texts[0], final_texts[1]]


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    assert [m.id for m in oa.models.list()] == ["sumi-tiny"]
    completion = oa.completions.create(model="sumi-tiny", prompt="And the earth", max_tokens=6, n=2, seed=3,
                                       extra_body={"sampler": "greedy", "num_denoising_steps": 3,
                                                   "canvas_length": 24})
    assert len(completion.choices) == 2 and all(isinstance(c.text, str) for c in completion.choices)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    stream = oa.completions.create(model="sumi-tiny", prompt="And the earth", max_tokens=6, seed=3, stream=True,
                                   extra_body={"sampler": "greedy", "num_denoising_steps": 3, "canvas_length": 24})
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert streamed == completion.choices[0].text  # concatenating `text` gives the completion
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        oa.completions.create(model="sumi-tiny", prompt="x", max_tokens=MAX_TOKENS_LIMIT + 1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


def test_event_loop_stays_responsive(server, client):
    """/health answers while the worker thread runs a long generation."""
    result = {}

    def long_request():
        result["r"] = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 40, "canvas_length": 64,
                                                           "num_denoising_steps": 200, "seed": 1, **STEPWISE})

    worker = threading.Thread(target=long_request)
    worker.start()
    while httpx.get(server + "/health").json()["in_flight"] == 0 and "r" not in result:
        time.sleep(0.005)
    answered_while_busy = 0
    while worker.is_alive():
        if httpx.get(server + "/health", timeout=5).status_code == 200 and worker.is_alive():
            answered_while_busy += 1
        time.sleep(0.01)
    worker.join()
    assert result["r"].status_code == 200
    assert answered_while_busy >= 1


def test_concurrent_load(server, client):
    """50 requests, 8 in flight at a time: no failure; requests that arrive together share sampler calls."""
    before = client.get("/health").json()
    latencies: list[float] = []

    def one(i: int) -> int:
        start = time.perf_counter()
        r = client.post("/v1/completions", json={"prompt": f"Verse {i}: and God", "temperature": 0.9, **FAST})
        latencies.append(time.perf_counter() - start)
        assert len(r.json()["choices"]) == 1 if r.status_code == 200 else True
        return r.status_code

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(50)))
    wall = time.perf_counter() - start
    assert statuses == [200] * 50
    after = client.get("/health").json()
    batches = after["batches_run"] - before["batches_run"]
    assert after["sequences_run"] - before["sequences_run"] == 50
    assert batches < 50  # batching happened
    latencies.sort()
    report = {"requests": 50, "concurrency": 8, "requests_per_s": round(50 / wall, 2),
              "p50_ms": round(1000 * statistics.median(latencies), 1),
              "p95_ms": round(1000 * latencies[int(0.95 * len(latencies)) - 1], 1),
              "sampler_calls": batches, "mean_batch": round(50 / batches, 2)}
    print("serve load:", json.dumps(report))
