"""vLLM-style endpoints beside ``/v1/completions``: chat completions, tokenize/detokenize and Prometheus metrics.

* ``POST /v1/chat/completions``: ``messages`` rendered with the tokenizer's chat template (ChatML,
  :mod:`sumi.chat`) plus the assistant header, sampled like a completion whose text ends at ``<|im_end|>``.
  Streaming follows OpenAI's chunk format (``chat.completion.chunk``: a first delta with the role, the content as
  deltas, a last chunk with ``finish_reason``, an optional usage chunk, ``[DONE]``). A diffusion model writes the
  whole answer at once, so the content arrives when the canvas has settled; ``"snapshots": true`` (an extension)
  adds one chunk per denoising step with an empty delta and the current canvas text in ``canvas``.
* ``POST /tokenize`` (``prompt`` or ``messages``; ``add_special_tokens`` prepends BOS, default true) →
  ``{"count", "max_model_len", "tokens"}``; ``POST /detokenize`` (``tokens``) → ``{"prompt"}``.
* ``GET /metrics``: Prometheus text format — requests by endpoint and status, latency histograms, queue depth,
  requests in flight, forward passes (NFE), generated tokens, sampler seconds, and NFE/s and tokens/s of the
  sampler's busy time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from sumi.errors import InputError
from sumi.serve.engine import Engine, Job
from sumi.serve.protocol import APIError, check_text, parse_completion_request, sse
from sumi.serve.security import disconnect_check

CHAT_DEFAULT_MAX_TOKENS = 256
_CHAT_ONLY = {"messages", "max_completion_tokens", "snapshots", "response_format", "tools", "tool_choice",
              "parallel_tool_calls", "store", "metadata"}


def add_routes(app: FastAPI, engine: Engine, tokenizer, model_config, config, authorize: Callable,
               read_json: Callable) -> None:
    """Register the endpoints of this module on ``app`` (``authorize`` / ``read_json`` are the app's)."""
    metrics = _Metrics(engine)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        endpoint = path if path in metrics.paths(app) else "other"  # bounded label values
        metrics.record(endpoint, response.status_code, time.perf_counter() - started)
        return response

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        authorize(request)
        body = await read_json(request)
        if not isinstance(body, dict) or ("prompt" in body) == ("messages" in body):
            raise APIError(400, "give either 'prompt' (a string) or 'messages' (a chat)", param="prompt")
        add_special = body.get("add_special_tokens", True)
        if not isinstance(add_special, bool):
            raise APIError(400, "'add_special_tokens' must be a boolean", param="add_special_tokens")
        if "messages" in body:
            tokens = await asyncio.to_thread(_chat_ids, tokenizer, body["messages"],
                                             body.get("add_generation_prompt", True), config.limits)
        else:
            if not isinstance(body["prompt"], str):
                raise APIError(400, "'prompt' must be a string", param="prompt")
            prompt = check_text(body["prompt"], "prompt")
            if len(prompt) > config.limits.max_prompt_chars:
                raise APIError(400, f"a prompt of {len(prompt)} characters exceeds this server's limit of "
                                    f"{config.limits.max_prompt_chars}", param="prompt")
            tokens = await asyncio.to_thread(tokenizer.encode, prompt, add_bos=add_special)
        return {"count": len(tokens), "max_model_len": model_config.max_position_embeddings, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        authorize(request)
        body = await read_json(request)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise APIError(400, "'tokens' must be a list of token ids", param="tokens")
        try:
            return {"prompt": tokenizer.decode(tokens)}
        except InputError as exc:
            raise APIError(400, str(exc), param="tokens") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        if "messages" not in body:
            raise APIError(400, "'messages' is required", param="messages")
        for name in ("tools", "tool_choice", "response_format"):
            if body.get(name) not in (None, [], {"type": "text"}, "none"):
                raise APIError(400, f"'{name}' is not supported by this server", param=name)
        snapshots = body.get("snapshots", False)
        if not isinstance(snapshots, bool):
            raise APIError(400, "'snapshots' must be a boolean", param="snapshots")
        ids = await asyncio.to_thread(_chat_ids, tokenizer, body["messages"], True, config.limits)
        completion = {k: v for k, v in body.items() if k not in _CHAT_ONLY}
        completion["prompt"] = [ids]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        completion["max_tokens"] = CHAT_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        completion["max_tokens"] = _cap(completion["max_tokens"], config.limits.max_tokens, body)
        parsed = await asyncio.to_thread(parse_completion_request, completion, model_id=config.model_id,
                                         vocab_size=model_config.vocab_size, limits=config.limits)
        end = tokenizer.token_to_id("<|im_end|>")
        parsed.stop_token_ids = (end,) if end is not None else ()
        job = await engine.submit_async(parsed)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if parsed.stream:
            return StreamingResponse(_chat_events(job, cid, created, config.model_id, snapshots, engine),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        choices = await engine.result_unless_gone(job, disconnect_check(request))
        if choices is None:  # nobody is listening any more
            return Response(status_code=499)
        return {"id": cid, "object": "chat.completion", "created": created, "model": config.model_id,
                "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                             "logprobs": None, "finish_reason": c.finish_reason} for c in choices],
                "usage": job.usage(choices), "system_fingerprint": None}


def _cap(value, limit: int, body: dict):
    """``max_completion_tokens`` is checked under its own name; the limit message names what the client sent."""
    if isinstance(value, int) and not isinstance(value, bool) and value > limit:
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise APIError(400, f"{name}={value} exceeds this server's limit of {limit}", param=name)
    return value


def _chat_ids(tokenizer, messages, add_generation_prompt, limits) -> list[int]:
    """Render and encode a chat (in a helper thread: long chats take time); hostile content is a 400."""
    from sumi.chat import apply_chat_template
    from sumi.errors import SumiError

    if not isinstance(add_generation_prompt, bool):
        raise APIError(400, "'add_generation_prompt' must be a boolean", param="add_generation_prompt")
    try:
        text = apply_chat_template(messages, tokenizer, add_generation_prompt=add_generation_prompt)
    except SumiError as exc:
        raise APIError(400, str(exc), param="messages") from None
    except (TypeError, ValueError, RecursionError) as exc:  # template engine errors on odd message shapes
        raise APIError(400, f"'messages' could not be rendered: {exc}", param="messages") from None
    check_text(text, "messages")
    if len(text) > limits.max_prompt_chars:
        raise APIError(400, f"the chat of {len(text)} characters exceeds this server's limit of "
                            f"{limits.max_prompt_chars}", param="messages")
    return tokenizer.encode(text)  # the template starts with the BOS string: no second BOS


def _chunk(cid: str, created: int, model_id: str, choices: list[dict], usage: dict | None = None) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "choices": choices, "system_fingerprint": None}
    if usage is not None:
        body["usage"] = usage
    return sse(body)


async def _chat_events(job: Job, cid: str, created: int, model_id: str, snapshots: bool,
                       engine: Engine) -> AsyncIterator[str]:
    rows = len(job.rows)
    yield _chunk(cid, created, model_id, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None} for i in range(rows)])
    async with aclosing(engine.events(job)) as events:
        async for event in events:
            if isinstance(event, APIError):
                yield sse(event.body())
            elif isinstance(event, list):  # the final choices
                for c in event:
                    yield _chunk(cid, created, model_id, [{"index": c.index, "delta": {"content": c.text},
                                                           "logprobs": None, "finish_reason": None}])
                    yield _chunk(cid, created, model_id, [{"index": c.index, "delta": {}, "logprobs": None,
                                                           "finish_reason": c.finish_reason}])
                if job.request.include_usage:
                    yield _chunk(cid, created, model_id, [], job.usage(event))
            elif snapshots:
                yield _chunk(cid, created, model_id, [
                    {"index": i, "delta": {}, "logprobs": None, "finish_reason": None, "canvas": text,
                     "step": event["step"], "num_steps": event["num_steps"]} for i, text in enumerate(event["texts"])])
    yield sse("[DONE]")


class _Metrics:
    """The server's Prometheus registry (one per app, so several apps in one process do not collide)."""

    def __init__(self, engine: Engine) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._paths: set[str] | None = None
        self.requests = Counter("sumi_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("sumi_request_latency_seconds", "Time to answer a request (streams: until the "
                                 "response starts)", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        Gauge("sumi_queue_depth", "Requests waiting for the model", registry=self.registry).set_function(
            lambda: engine.pending)
        Gauge("sumi_requests_in_flight", "Requests queued or running", registry=self.registry).set_function(
            lambda: engine.in_flight)
        registry = self.registry
        registry.register(_EngineCollector(engine))

    def paths(self, app: FastAPI) -> set[str]:
        if self._paths is None:
            self._paths = {getattr(route, "path", None) for route in app.routes}
        return self._paths

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        if endpoint == "/metrics":
            return
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)


class _EngineCollector:
    """Counters read from the engine at scrape time (the worker thread updates plain ints)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        e = self.engine
        yield CounterMetricFamily("sumi_forward_passes", "Model forward passes (NFE)", value=e.forward_passes)
        yield CounterMetricFamily("sumi_generated_tokens", "Completion tokens generated", value=e.tokens_generated)
        yield CounterMetricFamily("sumi_batches", "Sampler calls (batches) run", value=e.batches_run)
        yield CounterMetricFamily("sumi_sampler_seconds", "Wall time spent in the sampler", value=e.model_seconds)
        busy = e.model_seconds or float("nan")
        yield GaugeMetricFamily("sumi_nfe_per_second", "Forward passes per second of sampler time",
                                value=e.forward_passes / busy if e.model_seconds else 0.0)
        yield GaugeMetricFamily("sumi_tokens_per_second", "Generated tokens per second of sampler time",
                                value=e.tokens_generated / busy if e.model_seconds else 0.0)
