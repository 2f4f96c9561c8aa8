"""The vLLM-level endpoints on a real ``sumi serve`` process, driven by the official ``openai`` client:
completions, chat completions (plain and streamed in OpenAI's delta format), infilling via ``suffix``, refused
``logprobs``; then /tokenize, /detokenize, /metrics (Prometheus text) and the OpenAPI page."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

GREEDY = {"sampler": "greedy", "num_denoising_steps": 3, "canvas_length": 64}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_model_dir, serve_process):
    with serve_process(tiny_model_dir, "--model-name", "sumi-tiny", "--log-level", "warning",
                       env={"OMP_NUM_THREADS": "1"}, log_name="serve-openai") as (base, *_):
        yield base


@pytest.fixture(scope="module")
def oa(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completions_and_infilling(oa, tiny_tokenizer):
    done = oa.completions.create(model="sumi-tiny", prompt="And God said", max_tokens=5, seed=1, extra_body=GREEDY)
    assert isinstance(done.choices[0].text, str) and done.usage.completion_tokens <= 5
    filled = oa.completions.create(model="sumi-tiny", prompt="And God", suffix=" the light.", max_tokens=4,
                                   seed=2, extra_body=GREEDY)
    assert filled.choices[0].finish_reason == "stop" and filled.usage.completion_tokens == 4
    assert len(tiny_tokenizer.encode(filled.choices[0].text)) <= 8  # only the middle comes back
    with pytest.raises(openai.BadRequestError) as refused:
        oa.completions.create(model="sumi-tiny", prompt="x", max_tokens=2, logprobs=2)
    assert refused.value.body["param"] == "logprobs" and refused.value.status_code == 400


def test_chat_completions_plain_and_streamed(oa):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who made light?"}]
    chat = oa.chat.completions.create(model="sumi-tiny", messages=messages, max_tokens=6, seed=4, extra_body=GREEDY)
    answer = chat.choices[0].message
    assert answer.role == "assistant" and isinstance(answer.content, str)
    assert "<|im_end|>" not in answer.content and chat.usage.prompt_tokens > 10
    stream = oa.chat.completions.create(model="sumi-tiny", messages=messages, max_tokens=6, seed=4, stream=True,
                                        stream_options={"include_usage": True}, extra_body=GREEDY)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == answer.content  # same seed, same answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens
    snapshots = oa.chat.completions.create(model="sumi-tiny", messages=messages, max_tokens=6, seed=4, stream=True,
                                           extra_body={**GREEDY, "snapshots": True})
    steps = [c.choices[0].model_extra.get("step") for c in snapshots if c.choices]
    assert [s for s in steps if s is not None] == [0, 1, 2][:len([s for s in steps if s is not None])]
    assert any(s is not None for s in steps)


def test_tokenize_detokenize_metrics_and_openapi(server, tiny_tokenizer):
    with httpx.Client(base_url=server, timeout=30) as client:
        tok = client.post("/tokenize", json={"prompt": "<|im_start|>user\nIn the beginning"}).json()
        assert tok["tokens"] == tiny_tokenizer.encode("<|im_start|>user\nIn the beginning", add_bos=True)
        assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 256
        chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
        assert chat["tokens"][0] == tiny_tokenizer.bos_token_id
        assert client.post("/detokenize", json={"tokens": tok["tokens"][1:]}).json()["prompt"] == \
            "<|im_start|>user\nIn the beginning"
        assert client.post("/detokenize", json={"tokens": [10**6]}).status_code == 400
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        for name in ("sumi_requests_total", "sumi_request_latency_seconds_bucket", "sumi_queue_depth",
                     "sumi_forward_passes_total", "sumi_generated_tokens_total", "sumi_nfe_per_second",
                     "sumi_tokens_per_second"):
            assert name in text, name
        assert 'endpoint="/tokenize",status="200"' in text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line and not line.startswith("#")}
        assert values["sumi_forward_passes_total"] > 0 and values["sumi_generated_tokens_total"] > 0
        assert values["sumi_nfe_per_second"] > 0  # earlier tests in this module ran the sampler
        schema = client.get("/openapi.json").json()
        assert {"/v1/completions", "/v1/chat/completions", "/tokenize", "/metrics"} <= set(schema["paths"])
        assert client.get("/docs").status_code == 200
