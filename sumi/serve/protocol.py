"""The OpenAI completions protocol as sumi serves it: request validation and response/error bodies.

Validation is explicit (not a pydantic model) so that every bad field gets an OpenAI-style error naming the
field and the accepted values, with status 400, and never reaches the model. OpenAI fields that a diffusion
sampler cannot honour (``logprobs``, ``echo``, ``best_of`` > 1, penalties, ``logit_bias``) are accepted only
at their neutral value (else 400 naming the field, OpenAI's error convention). ``suffix`` is infilling: ``max_tokens``
new tokens between the prompt and the suffix (:mod:`sumi.infill`). sumi's sampler options ride along as extra fields.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sumi.errors import OptionError
from sumi.sampling.config import SAMPLERS, SCHEDULES, SamplingConfig

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULTS = SamplingConfig()
"""sumi's sampler defaults (the server changes only ``max_tokens``, to OpenAI's)."""
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class CompletionRequest:
    prompts: list[str | list[int]]
    """Text prompts or token-id prompts (used as given, no BOS added)."""
    n: int
    stop: list[str]
    stream: bool
    include_usage: bool
    options: SamplingConfig
    """The sampler call of every row (equal options may share one batch)."""
    suffix: str | None = None
    """Infilling: text after the ``max_tokens`` generated ones (one text prompt)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a completion (chat: ``<|im_end|>``), cut before decoding."""


def sse(payload: dict | str) -> str:
    """One server-sent event carrying ``payload`` (JSON, or a literal such as ``[DONE]``)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


@dataclass(frozen=True)
class Limits:
    """Per-request bounds enforced before anything is queued."""

    max_tokens: int = 512
    max_n: int = 16
    max_prompts: int = 64
    max_rows: int = 64
    max_steps: int = 4096
    max_prompt_chars: int = 100_000
    """Longest text prompt (characters): tokenising it must stay a small fraction of a second."""
    max_cost: int = 1 << 24
    """Most rows × denoising steps × canvas positions per request (the work it asks for); 400 above."""


# OpenAI fields accepted only at their neutral value: name -> predicate on the value, and what to say.
_NEUTRAL = {
    "logprobs": (lambda v: v in (None, 0), "logprobs are not available from a diffusion sampler"),
    "echo": (lambda v: v in (None, False), "echo is not supported"),
    "best_of": (lambda v: v in (None, 1), "best_of is not supported (use n)"),
    "presence_penalty": (lambda v: v in (None, 0, 0.0), "presence_penalty is not supported"),
    "frequency_penalty": (lambda v: v in (None, 0, 0.0), "frequency_penalty is not supported"),
    "logit_bias": (lambda v: v in (None, {}), "logit_bias is not supported"),
}
_IGNORED = ("user",)
_KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
          "top_k", "sampler", "num_denoising_steps", "tokens_per_step", "canvas_length", "schedule",
          "anchor_eosbos", "suffix", "psi_kappa", "threshold", "greedy_tail", *_NEUTRAL, *_IGNORED}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"'{name}' must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise _bad(name, f"'{name}' must be {limit}, got {value}")
    return value


def _float(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise _bad(name, f"'{name}' must be a number, got {value!r}")
    if value > hi or value < lo or (lo_open and value == lo):
        raise _bad(name, f"'{name}' must lie in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
    return float(value)


def check_text(value: str, param: str) -> str:
    """``value`` if it can be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"`` cannot); else a 400."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(param, f"'{param}' holds an unpaired surrogate (an invalid \\ud800-\\udfff escape)") from None
    return value


def _prompts(value: Any, vocab_size: int, max_prompts: int, max_chars: int = 100_000) -> list[str | list[int]]:
    """OpenAI accepts a string, a list of strings, a list of ids, or a list of id lists."""
    if isinstance(value, str):
        prompts: list = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        prompts = list(value)
    elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        prompts = [list(value)]
    elif isinstance(value, list) and value and all(isinstance(v, list) and v for v in value):
        prompts = [list(v) for v in value]
        if not all(isinstance(i, int) and not isinstance(i, bool) for p in prompts for i in p):
            raise _bad("prompt", "token-id prompts must be lists of integers")
    else:
        raise _bad("prompt", "'prompt' must be a string, a non-empty list of strings, a list of token ids or a "
                             "list of token-id lists")
    if len(prompts) > max_prompts:
        raise _bad("prompt", f"at most {max_prompts} prompts per request, got {len(prompts)}")
    for p in prompts:
        if isinstance(p, str):
            check_text(p, "prompt")
            if len(p) > max_chars:
                raise _bad("prompt", f"a prompt of {len(p)} characters exceeds this server's limit of {max_chars}")
        elif len(p) > max_chars:
            raise _bad("prompt", f"a prompt of {len(p)} token ids exceeds this server's limit of {max_chars}")
    for p in prompts:
        if isinstance(p, list) and any(not 0 <= i < vocab_size for i in p):
            raise _bad("prompt", f"token ids must lie in [0, {vocab_size})")
    return prompts


def parse_completion_request(body: Any, *, model_id: str, vocab_size: int, limits: Limits) -> CompletionRequest:
    """Validate a ``/v1/completions`` JSON body; raises :class:`APIError` (400/404) naming the bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _bad(unknown[0], f"unrecognized request argument(s) {unknown}; supported: {sorted(_KNOWN)}")
    model = body.get("model")
    if model is not None and model != model_id:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {model_id!r}",
                       param="model", code="model_not_found")
    if "prompt" not in body:
        raise _bad("prompt", "'prompt' is required")
    for name, (ok, message) in _NEUTRAL.items():
        if name in body and not ok(body[name]):
            raise _bad(name, message)
    prompts = _prompts(body["prompt"], vocab_size, limits.max_prompts, limits.max_prompt_chars)
    n = _int(body, "n", 1, 1, limits.max_n)
    if len(prompts) * n > limits.max_rows:
        raise _bad("n", f"prompts x n = {len(prompts) * n} exceeds this server's limit of {limits.max_rows} "
                        "sequences per request")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > limits.max_tokens:
        raise _bad("max_tokens", f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens}")
    max_tokens = _int(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, limits.max_tokens)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise _bad("stop", f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} strings")
    for s in stop:
        check_text(s, "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "'stream' must be a boolean")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
        raise _bad("stream_options", "'stream_options' may only hold 'include_usage'")
    sampler = body.get("sampler", DEFAULTS.sampler)
    if sampler not in SAMPLERS:
        raise _bad("sampler", f"'sampler' must be one of {list(SAMPLERS)}, got {sampler!r}")
    schedule = body.get("schedule", DEFAULTS.schedule)
    if schedule not in SCHEDULES:
        raise _bad("schedule", f"'schedule' must be one of {list(SCHEDULES)}, got {schedule!r}")
    anchor = body.get("anchor_eosbos", DEFAULTS.anchor_eosbos)
    if not isinstance(anchor, bool):
        raise _bad("anchor_eosbos", "'anchor_eosbos' must be a boolean")
    top_p = _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    greedy_tail = body.get("greedy_tail", DEFAULTS.greedy_tail)
    if not isinstance(greedy_tail, bool):
        raise _bad("greedy_tail", "'greedy_tail' must be a boolean")
    try:  # the sampler's own checks, so nothing invalid is ever queued
        options = SamplingConfig(
            max_new_tokens=max_tokens,
            temperature=_float(body, "temperature", DEFAULTS.temperature, 0.0, 2.0),
            top_p=None if top_p == 1.0 else top_p,
            top_k=_int(body, "top_k", DEFAULTS.top_k, 1, vocab_size),
            sampler=sampler,
            num_denoising_steps=_int(body, "num_denoising_steps", DEFAULTS.num_denoising_steps, 1,
                                     limits.max_steps),
            tokens_per_step=_int(body, "tokens_per_step", DEFAULTS.tokens_per_step, 1, max_tokens),
            canvas_length=_int(body, "canvas_length", DEFAULTS.canvas_length, 4),
            schedule=schedule,
            anchor_eosbos=anchor,
            psi_kappa=_float(body, "psi_kappa", DEFAULTS.psi_kappa, 0.0, 1.0),
            threshold=_float(body, "threshold", DEFAULTS.threshold, 0.0, 1.0, lo_open=True),
            greedy_tail=greedy_tail,
            seed=_int(body, "seed", DEFAULTS.seed, 0, 2**63 - 1),
        )
    except OptionError as exc:
        raise _bad(exc.field, str(exc)) from None
    suffix = body.get("suffix")
    if suffix == "":
        suffix = None
    if suffix is not None:
        if not isinstance(suffix, str):
            raise _bad("suffix", "'suffix' must be a string")
        if len(prompts) != 1 or not isinstance(prompts[0], str):
            raise _bad("suffix", "'suffix' (infilling) needs exactly one text prompt")
    return CompletionRequest(prompts=prompts, n=n, stop=stop, stream=stream,
                             include_usage=bool(stream_options.get("include_usage", False)), options=options,
                             suffix=suffix)


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_body(cid: str, created: int, model_id: str, choices: list[dict], usage: dict | None) -> dict:
    body = {"id": cid, "object": "text_completion", "created": created, "model": model_id, "choices": choices,
            "system_fingerprint": None}
    if usage is not None:
        body["usage"] = usage
    return body


def now() -> int:
    return int(time.time())
