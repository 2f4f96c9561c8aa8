"""The FastAPI application: OpenAI-compatible ``/v1/completions``, ``/v1/models`` and ``/health``; chat
completions, ``/tokenize``, ``/detokenize`` and ``/metrics`` come from :mod:`sumi.serve.routes`; ``/docs`` is the
OpenAPI page.

Every failure is answered with an OpenAI-style error body ``{"error": {"message", "type", "param", "code"}}``:
400 malformed JSON or a bad field, 401 a missing/wrong API key, 404 an unknown model or route, 413 a body over
``max_request_bytes``, 503 a full queue, 500 anything unexpected (logged; the server keeps running).

Streaming (``"stream": true``) sends server-sent events: one chunk per denoising step whose choices carry
``text: ""`` (so clients that concatenate ``text`` get exactly the final completion) plus the current canvas
text in ``canvas`` and the step in ``step`` / ``num_steps``; then one chunk per choice with the final ``text``
and ``finish_reason``; an optional usage chunk; and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sumi.errors import ConfigError
from sumi.serve.engine import Choice, Engine, Job
from sumi.serve.protocol import (
    APIError,
    Limits,
    completion_body,
    completion_id,
    now,
    parse_completion_request,
    sse,
)
from sumi.serve.security import LOOPBACK_HOSTS, DisconnectWatch, HostAllowList, disconnect_check, parse_json

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Server settings (``sumi serve`` flags)."""

    model_id: str = "sumi"
    """Name reported by /v1/models and required (when given) in requests' ``model``."""
    api_key: str | None = None
    """When set, /v1/* requires ``Authorization: Bearer <api_key>``."""
    max_request_bytes: int = 1 << 20
    """Largest accepted request body (413 above)."""
    batch_window_ms: float = 5.0
    """How long the batcher waits after a request for others to batch with it."""
    max_batch_rows: int = 32
    """Most sequences in one sampler call."""
    max_queue: int = 256
    """Most queued requests before answering 503."""
    limits: Limits = field(default_factory=Limits)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    """``Host`` header names answered (others get 400: DNS-rebinding protection); ``("*",)`` allows all."""
    body_timeout_s: float = 30.0
    """Longest time to receive a request body (408 after; a stalled upload no longer holds a connection)."""

    def __post_init__(self) -> None:
        if self.max_request_bytes < 64:
            raise ConfigError("max_request_bytes must be at least 64")
        if self.batch_window_ms < 0:
            raise ConfigError("batch_window_ms must be >= 0")
        if self.max_batch_rows < 1 or self.max_queue < 1:
            raise ConfigError("max_batch_rows and max_queue must be >= 1")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("api_key must not be empty (omit it to disable authentication)")
        if not self.allowed_hosts:
            raise ConfigError("allowed_hosts must name at least one host (or '*')")
        if not self.body_timeout_s > 0:
            raise ConfigError("body_timeout_s must be > 0")


def create_app(model, tokenizer, config: ServeConfig | None = None) -> FastAPI:
    """An app serving ``model`` (a sumi model in eval mode) with ``tokenizer`` (:class:`SumiTokenizer`)."""
    config = config or ServeConfig()
    engine = Engine(model, tokenizer, batch_window_ms=config.batch_window_ms, max_batch_rows=config.max_batch_rows,
                    max_queue=config.max_queue, max_cost=config.limits.max_cost)
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    # The OpenAPI schema and its pages (/docs, /redoc) describe every route, as vLLM's server does.
    app = FastAPI(title="sumi", description="OpenAI-compatible API for a sumi uniform diffusion LM",
                  lifespan=lifespan, docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json")
    app.state.engine = engine
    app.state.config = config
    app.add_middleware(HostAllowList, allowed=config.allowed_hosts)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", type="server_error").body(),
                            status_code=500)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def read_json(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
            raise APIError(413, f"request body of {length} bytes exceeds the limit of {config.max_request_bytes}",
                           code="request_too_large")
        body = bytearray()

        async def receive() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > config.max_request_bytes:
                    raise APIError(413, f"request body exceeds the limit of {config.max_request_bytes} bytes",
                                   code="request_too_large")

        try:
            await asyncio.wait_for(receive(), config.body_timeout_s)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within {config.body_timeout_s:g} s",
                           code="request_timeout") from None
        return await asyncio.to_thread(parse_json, bytes(body))  # deep or huge JSON takes time: off the loop

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": config.model_id, "queued": engine.pending, "in_flight": engine.in_flight,
                "batches_run": engine.batches_run, "sequences_run": engine.rows_run, "cancelled": engine.cancelled}

    def model_card() -> dict:
        return {"id": config.model_id, "object": "model", "created": created, "owned_by": "sumi"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict:
        authorize(request)
        if model_id != config.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_json(request)
        parsed = await asyncio.to_thread(parse_completion_request, body, model_id=config.model_id,
                                         vocab_size=model.config.vocab_size, limits=config.limits)
        job = await engine.submit_async(parsed)
        cid, created_at = completion_id(), now()
        if parsed.stream:
            return StreamingResponse(_events(job, cid, created_at, config.model_id, engine),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        choices = await engine.result_unless_gone(job, disconnect_check(request))
        if choices is None:  # nobody is listening any more
            return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
        return completion_body(cid, created_at, config.model_id, [_choice_dict(c) for c in choices],
                               job.usage(choices))

    from sumi.serve.routes import add_routes

    add_routes(app, engine, tokenizer, model.config, config, authorize, read_json)
    app.add_middleware(DisconnectWatch)  # outermost: sees the client hang up whatever runs inside
    return app


def _choice_dict(choice: Choice) -> dict:
    return {"text": choice.text, "index": choice.index, "logprobs": None, "finish_reason": choice.finish_reason}


async def _events(job: Job, cid: str, created: int, model_id: str, engine: Engine) -> AsyncIterator[str]:
    """Server-sent events of one streamed job (see the module docstring for the chunk shapes)."""
    async with aclosing(engine.events(job)) as events:
        async for event in events:
            if isinstance(event, APIError):
                yield sse(event.body())
            elif isinstance(event, list):  # the final choices
                for choice in event:
                    yield sse(completion_body(cid, created, model_id, [_choice_dict(choice)], None))
                if job.request.include_usage:
                    yield sse(completion_body(cid, created, model_id, [], job.usage(event)))
            else:
                choices = [{"text": "", "index": i, "logprobs": None, "finish_reason": None, "canvas": text,
                            "step": event["step"], "num_steps": event["num_steps"]}
                           for i, text in enumerate(event["texts"])]
                yield sse(completion_body(cid, created, model_id, choices, None))
    yield sse("[DONE]")
