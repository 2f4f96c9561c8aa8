"""lm-evaluation-harness backend ``sumi``: NELBO log-likelihoods and diffusion sampling (``docs/design.md`` §5).

Registered as ``model="sumi"`` by ``import sumi.integrations.lm_eval`` (``sumi eval`` does it);
``model_args`` are the keyword arguments of :class:`SumiLM`, e.g.
``pretrained=runs/demo/model,num_timesteps=128,canvas_length=2048,max_rows=64``.

* ``loglikelihood(context, continuation)`` → (−NELBO of the continuation given the clean context, is_greedy).
  is_greedy: whether one forward on the clean canvas ``[context | continuation | random tail]`` gives the
  continuation as the argmax at every scored position (the continuation is a fixed point of the denoiser's
  greedy step; the reference fork returns False always). ``greedy_check=False`` skips that forward.
* ``loglikelihood_rolling(text)`` → −NELBO of the whole text over canvas-sized windows; every token is scored once,
  each later window sees the ``rolling_context`` tokens before it as clean context (the first sees BOS).
  The text's closing EOS is not scored (as lm-eval's causal backends).
* ``generate_until(context, gen_kwargs)`` → :func:`sumi.sampling.generate` (adaptive sampler, temperature 0,
  ``steps`` = max new tokens, EOS/BOS anchored: the paper's protocol), cut at the ``until`` strings.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from lm_eval.api.model import LM

from sumi.checkpoint import resolve_model
from sumi.diffusion import uniform
from sumi.errors import ConfigError
from sumi.eval.nelbo import (
    EncodedPair,
    EncodeOptions,
    NelboConfig,
    argmax_reproduces,
    canvas_size,
    encode_pair,
    fit_canvas,
    nelbo_of_ids,
    rolling_windows,
)
from sumi.sampling import SamplingConfig, cut_at_stop, generate

logger = logging.getLogger(__name__)

def _batch_size(value) -> int:
    """lm-eval passes ints, numeric strings or "auto"/"auto:N"; sumi has no auto-tuning (uses 1)."""
    if value is None:
        return 1
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    if isinstance(value, str) and value.startswith("auto"):
        logger.warning("batch_size=%s: sumi does not auto-tune; using 1 request per forward", value)
        return 1
    raise ConfigError(f"batch_size must be a positive integer, got {value!r}")


class SumiLM(LM):
    """A sumi model directory as an lm-eval ``LM``.

    Args:
        pretrained: model directory (config.json, safetensors; tokenizer files unless ``tokenizer`` is given).
        tokenizer: tokenizer path (default: ``pretrained``).
        device, dtype: where and how to load the weights (default CPU, stored dtype).
        batch_size: lm-eval's batch size, in requests: a scored request costs K·D canvas rows, so one forward
            holds batch_size·K·D rows (capped by ``max_rows``); generation samples batch_size prompts at once.
        max_rows: cap on canvas rows per forward (memory); default no cap.
        num_timesteps, num_draws, canvas_length, seed, effective_snr: the NELBO estimator (:class:`NelboConfig`).
        add_bos, add_eos, tokenization: how (context, continuation) become ids (:class:`EncodeOptions`).
        truncation: over-long requests; default ``left`` keeps the text next to the answer.
        greedy_check: compute is_greedy with one extra forward per request.
        rolling_context: clean context ids before each later rolling window (default canvas/4).
        sampler, steps, tokens_per_step, temperature, schedule, anchor_eosbos, max_gen_toks: generation
            defaults (``steps`` None = max new tokens); ``gen_kwargs`` of a task override temperature,
            max_gen_toks and until.
        show_progress: tqdm bars over canvas rows / generation batches.
    """

    def __init__(self, pretrained: str, tokenizer: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size=None, max_batch_size=None, max_rows: int | None = None,
                 num_timesteps: int = 128, num_draws: int = 1, canvas_length: int = 2048, seed: int = 0,
                 effective_snr: bool = False, add_bos: bool = True, add_eos: bool = True,
                 tokenization: str = "separate", truncation: str = "left", greedy_check: bool = True,
                 rolling_context: int | None = None, sampler: str = "adaptive", steps: int | None = None,
                 tokens_per_step: int = 1, temperature: float = 0.0, schedule: str = "linear",
                 anchor_eosbos: bool = True, max_gen_toks: int = 256, show_progress: bool = True,
                 **unknown) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(f"unknown sumi model_args {sorted(unknown)}; see sumi.eval.lm_eval_backend.SumiLM")
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            logger.warning("device=%s requested but CUDA is not available; using the CPU", device)
            device = "cpu"
        model, self.tokenizer = resolve_model(str(pretrained), tokenizer, device=device, dtype=dtype)
        self.model = model.eval()
        self._device = torch.device(device or "cpu")
        self.batch_size = _batch_size(batch_size)
        rows = self.batch_size * int(num_timesteps) * int(num_draws)
        if max_rows is not None:
            if int(max_rows) <= 0:
                raise ConfigError(f"max_rows must be a positive integer, got {max_rows!r}")
            rows = min(rows, int(max_rows))
        self.nelbo_config = NelboConfig(num_timesteps=int(num_timesteps), num_draws=int(num_draws),
                                        canvas_length=int(canvas_length), batch_size=max(rows, 1),
                                        seed=int(seed), effective_snr=bool(effective_snr))
        self.encode_options = EncodeOptions(add_bos=bool(add_bos), add_eos=bool(add_eos),
                                            tokenization=tokenization, truncation=truncation)
        self.canvas = canvas_size(self.model, int(canvas_length))
        self.rolling_context = self.canvas // 4 if rolling_context is None else int(rolling_context)
        self.greedy_check = bool(greedy_check)
        self.seed = int(seed)
        self.sampling = SamplingConfig(sampler=sampler, schedule=schedule, tokens_per_step=int(tokens_per_step),
                                       anchor_eosbos=bool(anchor_eosbos), temperature=float(temperature),
                                       num_denoising_steps=None if steps is None else int(steps),
                                       canvas_length=self.canvas, seed=self.seed)
        """Sampler options of ``generate_until``; each request sets its own budget (and temperature)."""
        self.max_gen_toks = int(max_gen_toks)
        self.show_progress = bool(show_progress)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> SumiLM:
        """lm-eval's constructor from ``--model_args``: those win over its own settings (``--device``,
        ``--batch_size``), instead of a ``TypeError`` for a keyword given twice (``model_args=…,device=cpu``)."""
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> SumiLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        for key in sorted(set(extra) & set(arg_dict)):
            if extra[key] != arg_dict[key]:
                logger.debug("model_args %s=%s overrides lm-eval's %s=%s", key, arg_dict[key], key, extra[key])
        return cls(**{**extra, **arg_dict})

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def tokenizer_name(self) -> str:
        return f"sumi-{self.tokenizer.vocab_size}"

    def _progress(self, total: int, desc: str):
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="row")

    def _nelbo(self, pairs: list[EncodedPair], desc: str) -> list[float]:
        """Total NELBO (nats) per request."""
        config = self.nelbo_config
        bar = self._progress(len(pairs) * config.num_timesteps * config.num_draws, desc)
        try:
            raw = nelbo_of_ids(self.model, [(p.prompt, p.target) for p in pairs], config, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        return [r.total_nats for r in raw]

    # ------------------------------------------------------------------------------------------ LM API
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            pair = encode_pair(self.tokenizer, context, continuation, self.encode_options)
            pairs.append(fit_canvas(pair, self.canvas, self.encode_options.truncation,
                                    keep_first=int(self.encode_options.add_bos), what="request"))
        totals = self._nelbo(pairs, "loglikelihood (NELBO)")
        if self.greedy_check:
            greedy = argmax_reproduces(self.model, [(p.prompt, p.target) for p in pairs], self.canvas,
                                       seed=self.seed, batch_size=self.nelbo_config.batch_size)
        else:
            greedy = [False] * len(pairs)
        results = [(-total, bool(g)) for total, g in zip(totals, greedy)]
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        prefix = [self.tokenizer.bos_token_id] if self.encode_options.add_bos else []
        pairs, owner = [], []
        for n, req in enumerate(requests):
            ids = self.tokenizer.encode(req.args[0])
            for prompt, span in rolling_windows(ids, self.canvas, context=self.rolling_context, prefix=prefix):
                pairs.append(EncodedPair(prompt, span))
                owner.append(n)
        totals = self._nelbo(pairs, "loglikelihood_rolling (NELBO)") if pairs else []
        per_doc = [0.0] * len(requests)
        for n, total in zip(owner, totals):
            per_doc[n] -= total
        for req, res in zip(requests, per_doc):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return per_doc

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        settings = []
        for n, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", self.sampling.temperature if not do_sample else 1.0))
            if gen_kwargs:
                logger.debug("ignoring gen_kwargs %s", sorted(gen_kwargs))
            settings.append((context, until))
            groups[(max_new, temperature)].append(n)
        outputs = [""] * len(requests)
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc="generate_until", unit="request")
        for (max_new, temperature), members in groups.items():
            max_new = max(1, min(max_new, self.canvas - 3))  # room for BOS and the EOS, BOS anchor
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                prompts = [self._generation_prompt(settings[n][0], max_new) for n in chunk]
                out = generate(self.model, prompts, self.sampling, max_new_tokens=max_new,
                               num_denoising_steps=self.sampling.num_denoising_steps or max_new,
                               temperature=temperature, initial_canvas=self._noise(prompts))
                for n, seq in zip(chunk, out.sequences):
                    text = self.tokenizer.decode(seq, skip_special_tokens=True)
                    outputs[n] = cut_at_stop(text, settings[n][1])
                    self.cache_hook.add_partial("generate_until", requests[n].args, outputs[n])
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return outputs

    def _noise(self, prompts: list[list[int]]) -> torch.Tensor:
        """Starting canvases [B, canvas], each row drawn from its own seed (prompt ids, seed): a request's
        generation does not depend on which other requests share its batch."""
        from sumi.eval.nelbo import model_device, request_seed

        mixing = uniform(int(self.model.config.vocab_size))
        rows = [mixing.sample(torch.zeros(self.canvas), generator=torch.Generator().manual_seed(
            request_seed(self.seed, p, []))) for p in prompts]
        return torch.stack(rows).to(model_device(self.model))

    def _generation_prompt(self, context: str, max_new: int) -> list[int]:
        """BOS + context ids, keeping the context's end when it would not leave room for ``max_new`` tokens."""
        ids = self.tokenizer.encode(context)
        room = self.canvas - max_new - 2 - int(self.encode_options.add_bos)  # 2: the EOS, BOS anchor
        if len(ids) > room:
            logger.warning("generation prompt of %d tokens cut to its last %d to fit the canvas", len(ids), room)
            ids = ids[len(ids) - room:] if room > 0 else []
        return ([self.tokenizer.bos_token_id] if self.encode_options.add_bos else []) + ids
