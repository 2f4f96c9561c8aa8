"""The serving engine in-process: request parsing, batch grouping, one-call batching, failure isolation."""

from __future__ import annotations

import asyncio

import pytest
import torch

from sumi.sampling import SamplingConfig
from sumi.serve.engine import Engine, Job
from sumi.serve.protocol import APIError, Limits, parse_completion_request


def _parse(**body):
    return parse_completion_request({"prompt": "x", **body}, model_id="m", vocab_size=512, limits=Limits())


def test_parse_defaults_and_options():
    request = _parse(prompt=["a", "b"], n=3, stop="\n", top_p=1.0, sampler="greedy", tokens_per_step=2,
                     max_tokens=9, user="someone", logprobs=None, echo=False, best_of=1)
    assert request.prompts == ["a", "b"] and request.n == 3 and request.stop == ["\n"] and not request.stream
    options = request.options
    assert options == SamplingConfig(max_new_tokens=9, sampler="greedy", tokens_per_step=2)
    assert _parse().options.max_new_tokens == 16  # OpenAI's default
    with pytest.raises(APIError, match="tokens_per_step"):
        _parse(max_tokens=4, tokens_per_step=5)
    few = _parse(sampler="psi", psi_kappa=0.25, greedy_tail=True, max_tokens=8).options
    assert few == SamplingConfig(max_new_tokens=8, sampler="psi", psi_kappa=0.25, greedy_tail=True)
    assert _parse(sampler="threshold", threshold=0.7).options.threshold == 0.7
    with pytest.raises(APIError, match="threshold"):
        _parse(threshold=0.0)
    with pytest.raises(APIError, match="greedy_tail"):
        _parse(greedy_tail="yes")


def test_bad_option_names_its_field():
    """A bad sampler option reaches the client with the offending field as the OpenAI param."""
    with pytest.raises(APIError, match="top_p") as caught:
        _parse(top_p=0.0)
    assert caught.value.param == "top_p"
    with pytest.raises(APIError, match="integer") as caught:
        _parse(tokens_per_step=1.5)
    assert caught.value.param == "tokens_per_step"
    with pytest.raises(APIError, match="exceeds this server's limit of 64 sequences"):
        _parse(prompt=["a"] * 8, n=9)


def test_grouping_keeps_seeded_requests_alone_and_caps_rows(tiny_model, tiny_tokenizer):
    engine = Engine(tiny_model, tiny_tokenizer, max_batch_rows=4)
    loop = asyncio.new_event_loop()
    try:
        def job(**body):
            request = _parse(**body)
            return Job(request=request, rows=[[0, 5]] * (len(request.prompts) * request.n), future=loop.create_future())

        a, b, c = job(n=2), job(n=2), job(n=1)  # same options: 2 + 2 rows fill one batch, c spills
        seeded1, seeded2 = job(seed=1), job(seed=1)
        other = job(temperature=0.5)
        groups = engine._group([a, seeded1, b, other, c, seeded2])
        assert groups == [[a, b], [c], [seeded1], [other], [seeded2]]
    finally:
        loop.close()


def test_one_sampler_call_per_batch_and_failure_isolation(tiny_model, tiny_tokenizer):
    """Jobs queued together run as one generate() call; a job that fails on input does not fail the others."""
    calls = []
    # count trunk passes (the sampler may call the trunk and the head separately)
    tiny_model.model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    engine = Engine(tiny_model, tiny_tokenizer, batch_window_ms=0)

    async def scenario():
        await engine.start()
        try:
            body = {"max_tokens": 4, "canvas_length": 16, "num_denoising_steps": 2, "temperature": 0.5,
                    "sampler": "adaptive", "tokens_per_step": 1}
            good = [engine.submit(_parse(prompt=f"line {i}", **body)) for i in range(3)]
            results = await asyncio.gather(*(j.future for j in good))
            assert engine.batches_run == 1 and engine.rows_run == 3
            assert all(len(r) == 1 and r[0].finish_reason in ("stop", "length") for r in results)
            # a job whose prompt cannot fit the canvas (bypassing submit's check) fails alone
            loop = asyncio.get_running_loop()
            bad = Job(request=_parse(**body), rows=[list(range(3, 40))], future=loop.create_future())
            fine = engine.submit(_parse(prompt="fine", **body))
            engine._queue.put_nowait(bad)
            assert len(await fine.future) == 1
            with pytest.raises(APIError, match="canvas"):
                await bad.future
            with pytest.raises(APIError, match="does not fit the canvas of 16"):
                engine.submit(_parse(prompt="word " * 30, **body))
        finally:
            await engine.stop()

    with torch.no_grad():
        asyncio.run(scenario())
    assert calls[:2] == [3, 3]  # the first batch: every forward carried all three requests' rows
