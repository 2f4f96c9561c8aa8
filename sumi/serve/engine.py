"""The generation engine behind the server: a batching queue in front of one model worker thread.

Requests become :class:`Job` s on an asyncio queue. The batcher (a task on the event loop) takes the first job,
waits ``batch_window`` for company, drains whatever else is queued, groups jobs with equal
:class:`~sumi.sampling.config.SamplingConfig` into batches of at most ``max_batch_rows`` sequences, and runs each
batch as ONE :func:`sumi.sampling.generate` call in a single worker thread. The event loop never runs the model,
so ``/health`` and new requests are answered while a batch denoises. Jobs that arrive while a batch runs are
picked up together by the next drain (the queue is the batching window under load).

A request with a ``seed`` is never batched with others: its rows, and therefore its text, are then the same on
every run. If a batch fails on input (a prompt too long for the canvas), its jobs are retried one by one so only
the offending request gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from sumi.errors import InputError
from sumi.sampling import cut_at_stop, generate
from sumi.sampling.canvas import ANCHOR_WIDTH, canvas_width, row_budget
from sumi.sampling.config import SamplingConfig
from sumi.serve.protocol import APIError, CompletionRequest

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
"""How often a waiting non-streamed request checks whether its client is still connected."""

_END = object()
"""Sentinel closing a job's event stream."""


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class Job:
    """One request in flight. ``rows`` are the prompt ids, each repeated ``n`` times (choice order)."""

    request: CompletionRequest
    rows: list[list[int]]
    future: asyncio.Future
    events: asyncio.Queue | None = None
    prompt_tokens: int = 0
    key: Any = field(default=None)
    options: SamplingConfig | None = None
    """The sampler call of this job's rows (the request's, or its infilling layout's)."""
    infill: Any = None
    """The :class:`~sumi.infill.InfillLayout` of a ``suffix`` request."""
    cancelled: bool = False
    """Set when the client went away: the job is dropped from the queue, and a running batch of only
    cancelled jobs stops at its next step."""

    def __post_init__(self) -> None:
        options = self.options = self.options or self.request.options
        alone = options.seed is not None or self.infill is not None  # its own frozen layout: never shared
        self.key = (options, id(self)) if alone else options

    def usage(self, choices: list[Choice]) -> dict:
        """The OpenAI ``usage`` object of this job's answer."""
        completion = sum(c.completion_tokens for c in choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


class Engine:
    """Owns the model, the tokenizer, the queue and the worker thread. Start/stop inside a running loop."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_window_ms: float = 5.0,
                 max_batch_rows: int = 32, max_queue: int = 256, max_cost: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_window = batch_window_ms / 1000.0
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue
        self.batches_run = 0
        self.rows_run = 0
        self.forward_passes = 0
        """Model forward passes (NFE) run so far, over all batches."""
        self.tokens_generated = 0
        self.model_seconds = 0.0
        """Wall time the worker spent in the sampler."""
        self.in_flight = 0
        self.cancelled = 0
        """Jobs whose client went away before the answer (dropped from the queue or stopped mid-batch)."""
        self.max_cost = max_cost
        """Most rows × steps × canvas positions one request may cost (None: unbounded)."""
        """Jobs submitted and not yet answered (queued or running)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sumi-model")
        # Tokenising a long prompt takes time: it runs here, never on the event loop nor behind a model batch.
        self._prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sumi-prep")
        self._queue: asyncio.Queue[Job] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._batcher(), name="sumi-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._prep.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # ------------------------------------------------------------------ submission (event loop)
    def submit(self, request: CompletionRequest) -> Job:
        """Encode the prompts (here) and queue a job; raises :class:`APIError` (503 full queue, 400 too long or
        too costly)."""
        self._check_capacity()
        return self._enqueue(request, *self._encode(request))

    async def submit_async(self, request: CompletionRequest) -> Job:
        """:meth:`submit` with the prompts encoded in a helper thread (the event loop stays free)."""
        self._check_capacity()
        assert self._loop is not None
        encoded = await self._loop.run_in_executor(self._prep, self._encode, request)
        return self._enqueue(request, *encoded)

    async def events(self, job: Job) -> AsyncIterator[Any]:
        """The events of a streamed job until it ends: canvas snapshots (dicts), an :class:`APIError`, and the
        final choices (a list). Closed early (the client went away mid-stream), it cancels the job so its work
        stops; every endpoint streams through this one loop, wrapped in ``contextlib.aclosing`` so that
        happens at once rather than when the generator is collected."""
        assert job.events is not None
        try:
            while True:
                event = await job.events.get()
                if event is END_OF_STREAM:
                    return
                yield event
        finally:
            if not job.future.done():
                self.cancel(job)
            elif not job.future.cancelled():
                job.future.exception()  # mark an error as retrieved (it was sent as an event)

    def cancel(self, job: Job) -> None:
        """The client went away: drop ``job`` (queued) or let its batch stop early (running alone)."""
        if not job.future.done():
            job.cancelled = True
            self.cancelled += 1
            job.future.cancel()

    async def result_unless_gone(self, job: Job, is_disconnected: Callable) -> list[Choice] | None:
        """The job's choices; None when ``await is_disconnected()`` turns true first (the job is then cancelled,
        so its work stops)."""
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=DISCONNECT_POLL_S)
            if done:
                return job.future.result()
            if await is_disconnected():
                self.cancel(job)
                return None

    def _check_capacity(self) -> None:
        if self._queue is None or self._loop is None:
            raise APIError(503, "the engine is not running", type="server_error")
        if self._queue.qsize() >= self.max_queue:
            raise APIError(503, f"server busy: {self.max_queue} requests are already queued; retry later",
                           type="server_error", code="overloaded")

    def _encode(self, request: CompletionRequest) -> tuple[list[list[int]], Any, SamplingConfig | None]:
        """(prompt ids, infilling layout or None, the layout's sampler options or None)."""
        plan, options = None, None
        if request.suffix is not None:
            from sumi.infill import prompt_suffix_layout, sampling_overrides

            try:
                plan = prompt_suffix_layout(self.tokenizer, request.prompts[0], request.suffix,
                                            request.options.max_new_tokens)
            except InputError as exc:
                raise APIError(400, str(exc), param="suffix") from None
            options = request.options.replace(**sampling_overrides(plan, request.n))
            prompts = [plan.prompt]
        else:
            prompts = [self.tokenizer.encode(p, add_bos=True) if isinstance(p, str) else list(p)
                       for p in request.prompts]
        return prompts, plan, options

    def _enqueue(self, request: CompletionRequest, prompts: list[list[int]], plan: Any,
                 options: SamplingConfig | None) -> Job:
        assert self._queue is not None and self._loop is not None
        canvas = self._check_lengths(prompts, request, options)
        steps = (options or request.options).steps
        cost = len(prompts) * request.n * steps * canvas
        if self.max_cost is not None and cost > self.max_cost:
            raise APIError(400, f"this request would cost {len(prompts)} prompts × n={request.n} × {steps} steps × "
                                f"{canvas} canvas positions = {cost:,}, over this server's limit of "
                                f"{self.max_cost:,}; lower n, the steps or max_tokens, or split it",
                           code="request_too_costly")
        rows = [p for p in prompts for _ in range(request.n)]
        job = Job(request=request, rows=rows, future=self._loop.create_future(),
                  events=asyncio.Queue() if request.stream else None,
                  prompt_tokens=sum(len(p) for p in prompts), options=options, infill=plan)
        self._queue.put_nowait(job)
        self.in_flight += 1
        job.future.add_done_callback(self._done)
        return job

    def _done(self, future: asyncio.Future) -> None:
        self.in_flight -= 1
        if not future.cancelled():
            future.exception()  # a client that went away never awaits its error: mark it retrieved

    def _check_lengths(self, prompts: list[list[int]], request: CompletionRequest,
                       options: SamplingConfig | None = None) -> int:
        """The sampler's canvas rules (prompt + max_tokens must fit), checked before queueing; returns the
        canvas width."""
        options = options or request.options
        max_positions = self.model.config.max_position_embeddings
        longest = max(len(p) for p in prompts)
        max_tokens = options.max_new_tokens
        canvas = canvas_width(options.canvas_length, max_positions,
                              fit_to=longest + max_tokens + ANCHOR_WIDTH if options.fit_canvas else None)
        if longest + max_tokens > canvas:
            raise APIError(400, f"the prompt ({longest} tokens) + max_tokens={max_tokens} does not "
                                f"fit the canvas of {canvas} positions; shorten the prompt, lower max_tokens or "
                                f"raise canvas_length (max {max_positions})", param="prompt",
                           code="context_length_exceeded")
        return canvas

    # ------------------------------------------------------------------ batching (event loop)
    async def _batcher(self) -> None:
        assert self._queue is not None and self._loop is not None
        while True:
            first = await self._queue.get()
            if self.batch_window > 0:
                await asyncio.sleep(self.batch_window)
            jobs = [first]
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [job for job in jobs if not job.cancelled]  # their clients went away while queued
            for batch in self._group(jobs):
                try:
                    await self._loop.run_in_executor(self._executor, self._run_batch, batch)
                except Exception as exc:  # never let the batcher die: fail the batch's jobs instead
                    logger.exception("batch failed")
                    for job in batch:
                        self._fail(job, APIError(500, f"generation failed: {exc}", type="server_error"))

    def _group(self, jobs: list[Job]) -> list[list[Job]]:
        groups: dict[Any, list[list[Job]]] = {}
        for job in jobs:
            chunks = groups.setdefault(job.key, [[]])
            if chunks[-1] and sum(len(j.rows) for j in chunks[-1]) + len(job.rows) > self.max_batch_rows:
                chunks.append([])
            chunks[-1].append(job)
        return [chunk for chunks in groups.values() for chunk in chunks]

    # ------------------------------------------------------------------ the model (worker thread)
    def _run_batch(self, jobs: list[Job]) -> None:
        rows = [row for job in jobs for row in job.rows]
        options = jobs[0].options
        callback = self._callback(jobs, options)
        started = time.perf_counter()
        try:
            out = generate(self.model, rows, options, callback=callback)
        except InputError as exc:
            if len(jobs) > 1:  # find the offending request: the others still succeed
                for job in jobs:
                    self._run_batch([job])
                return
            self._fail(jobs[0], APIError(400, str(exc)))
            return
        self.batches_run += 1
        self.rows_run += len(rows)
        self.forward_passes += out.nfe
        self.model_seconds += time.perf_counter() - started
        start = 0
        for job in jobs:
            choices = []
            for i in range(len(job.rows)):
                r = start + i
                if job.infill is not None:
                    choices.append(self._infill_choice(i, job, out.canvas[r].tolist()))
                else:
                    choices.append(self._choice(i, out.sequences[r], out.budgets[r], job.request.stop,
                                                job.request.stop_token_ids))
                self.tokens_generated += choices[-1].completion_tokens
            start += len(job.rows)
            self._finish(job, choices)

    def _infill_choice(self, index: int, job: Job, canvas_row: list[int]) -> Choice:
        """The text written between the prompt and the suffix (OpenAI's completion text for ``suffix``)."""
        from sumi.infill import fills

        text = cut_at_stop("".join(fills(self.tokenizer, job.infill, canvas_row)), job.request.stop)
        return Choice(index=index, text=text, finish_reason="stop", completion_tokens=job.infill.fill_tokens)

    def _choice(self, index: int, sequence: list[int], budget: int, stop: list[str],
                stop_token_ids: tuple[int, ...] = ()) -> Choice:
        for i, token in enumerate(sequence):
            if token in stop_token_ids:  # e.g. <|im_end|> closing a chat turn
                sequence = sequence[:i]
                break
        text = self._decode(sequence)
        finish = "stop" if len(sequence) < budget else "length"  # shorter = cut at the model's EOS
        cut = cut_at_stop(text, stop)
        if cut != text:
            text, finish = cut, "stop"
        return Choice(index=index, text=text, finish_reason=finish, completion_tokens=len(sequence))

    def _decode(self, ids: list[int]) -> str:
        size = len(self.tokenizer)
        return self.tokenizer.decode([i for i in ids if i < size], skip_special_tokens=True)

    def _callback(self, jobs: list[Job], options: SamplingConfig) -> Callable:
        """Per step: stop when every job of the batch was cancelled, else stream the jobs that stream."""
        stream = self._stream_callback(jobs, options) if any(j.events is not None for j in jobs) else None

        def callback(info) -> bool | None:
            if all(job.cancelled for job in jobs):
                return True
            if stream is not None:
                stream(info)
            return None

        return callback

    def _stream_callback(self, jobs: list[Job], options: SamplingConfig) -> Callable:
        """Per step: the current text of every streamed row (its budget region, cut at EOS) as an event."""
        eos = self.model.config.eos_token_id
        spans = []
        start = 0
        for job in jobs:
            if job.events is not None:
                spans.append((job, start))
            start += len(job.rows)

        def callback(info) -> None:
            canvas_len = info.canvas.shape[1]
            snapshot = info.canvas.tolist()
            for job, first in spans:
                texts = []
                for i, prompt in enumerate(job.rows):
                    p = len(prompt)
                    budget = row_budget(options.max_new_tokens, p, canvas_len, options.anchor_eosbos)
                    new = snapshot[first + i][p:p + budget]
                    texts.append(self._decode(new[:new.index(eos)] if eos in new else new))
                self._post(job, {"step": info.step, "num_steps": info.num_steps, "texts": texts})
            return None

        return callback

    # ------------------------------------------------------------------ results back to the loop
    def _post(self, job: Job, event: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _finish(self, job: Job, choices: list[Choice]) -> None:
        assert self._loop is not None
        if job.events is not None:
            self._post(job, choices)
            self._post(job, _END)
        self._loop.call_soon_threadsafe(_resolve, job.future, choices, None)

    def _fail(self, job: Job, error: APIError) -> None:
        assert self._loop is not None
        if job.events is not None:
            self._post(job, error)
            self._post(job, _END)
        self._loop.call_soon_threadsafe(_resolve, job.future, None, error)


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


END_OF_STREAM = _END
