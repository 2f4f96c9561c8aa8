"""``transformers`` classes that *are* sumi's model: a config mirror and a thin ``PreTrainedModel``.

Design (see ``docs/interop.md``):

* :class:`SumiHFConfig` is a ``PreTrainedConfig`` whose fields are exactly :class:`sumi.config.SumiConfig`'s
  (the release's ``config.json`` keys). It validates through ``SumiConfig`` (a bad file raises
  :class:`sumi.errors.ConfigError`) and serialises to the release's key set, not transformers' defaults.
* :class:`SumiHFForMaskGeneration` subclasses both :class:`sumi.model.SumiForMaskGeneration` and
  ``PreTrainedModel``. Its submodules are sumi's own (``model`` = :class:`sumi.model.SumiModel`, ``lm_head``), so
  parameter names are the release's tensor names and a checkpoint loads by name with no translation; ``forward``,
  ``generate``, ``init_weights`` and ``save_pretrained`` are sumi's. It is an ``isinstance`` of
  ``SumiForMaskGeneration``, so samplers, scorers and the server take it as is.

transformers' ``from_pretrained`` machinery (``device_map``, quantization, adapters…) is kept, except that a plain
load of a local directory (no ``device_map``/quantization/config overrides) is routed through
:func:`sumi.checkpoint.load_model`'s shard-by-shard reader: peak memory one model copy plus one tensor.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from sumi.checkpoint import is_model_dir, iter_checkpoint_tensors, load_model, resolve_dtype, save_model
from sumi.config import SumiConfig
from sumi.errors import InputError
from sumi.model import ATTN_IMPLEMENTATIONS, RotaryEmbedding, SumiForMaskGeneration, SumiModel
from sumi.release import ReleaseMixin

logger = logging.getLogger(__name__)

# Keys transformers adds to every config dict that are not part of the release's config.json.
_HF_ONLY_KEYS = frozenset(PreTrainedConfig().to_dict()) - {"architectures", "dtype", "model_type",
                                                             "transformers_version"}


_HF_OWNED = frozenset({"dtype", "architectures", "model_type", "extra"})
"""SumiConfig fields that PreTrainedConfig already has (or that are sumi's bookkeeping)."""


def _release_fields() -> tuple[dict[str, Any], dict[str, Any]]:
    """(annotations, defaults) of every SumiConfig field the transformers config carries: derived, never re-listed,
    so the two configs cannot drift apart. Mutable defaults (RoPE parameters) start as None and are filled from
    SumiConfig's factory in ``__post_init__``."""
    annotations, defaults = {}, {}
    for f in dataclasses.fields(SumiConfig):
        if f.name in _HF_OWNED:
            continue
        annotations[f.name] = f.type
        defaults[f.name] = None if f.default is dataclasses.MISSING else f.default
    return annotations, defaults


_RELEASE_ANNOTATIONS, _RELEASE_DEFAULTS = _release_fields()
_SUMI_DEFAULTS = SumiConfig()


class SumiHFConfig(PreTrainedConfig):
    """The release ``config.json`` as a ``PreTrainedConfig``; its fields and defaults are :class:`SumiConfig`'s."""

    model_type = "sumi"
    __annotations__ = dict(_RELEASE_ANNOTATIONS)
    vars().update(_RELEASE_DEFAULTS)  # the class body's namespace: one class attribute (default) per field

    def __post_init__(self, **kwargs: Any) -> None:
        for name, default in _RELEASE_DEFAULTS.items():
            if default is None and getattr(self, name) is None:
                setattr(self, name, getattr(_SUMI_DEFAULTS, name))
        if self.architectures is None:
            self.architectures = ["SumiForMaskGeneration"]
        super().__post_init__(**kwargs)
        self.to_sumi_config()  # validates every field with sumi's messages (raises ConfigError)

    # ------------------------------------------------------------------ sumi <-> transformers
    def to_sumi_config(self) -> SumiConfig:
        """The equivalent :class:`SumiConfig`; keys sumi does not interpret (``auto_map``…) go to ``extra``."""
        data = PreTrainedConfig.to_dict(self)
        for key in _HF_ONLY_KEYS:
            data.pop(key, None)
        for key in ("dtype", "architectures"):
            if data.get(key) is None:
                data.pop(key, None)
        return SumiConfig.from_dict(data)

    @classmethod
    def from_sumi_config(cls, config: SumiConfig, **kwargs: Any) -> SumiHFConfig:
        """A transformers config carrying every key of ``config`` (``extra`` included)."""
        return cls(**{**config.to_dict(), **kwargs})

    def to_dict(self) -> dict[str, Any]:
        # The release's key set (plus extras such as auto_map), so save_pretrained / repr / push_to_hub all
        # write a config.json the released remote code could read.
        return self.to_sumi_config().to_dict()

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


class SumiHFForMaskGeneration(ReleaseMixin, SumiForMaskGeneration, PreTrainedModel):
    """Sumi's model with transformers' loading/saving API; forward = :meth:`SumiForMaskGeneration.forward`.

    ``model.config`` is the :class:`SumiHFConfig` (transformers needs it); ``model.sumi_config`` the
    :class:`SumiConfig` the modules were built from. :meth:`to_sumi` returns a plain
    :class:`SumiForMaskGeneration` sharing the same parameters.
    """

    config_class = SumiHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["SumiBlock"]
    _supports_sdpa = True
    # A converted checkpoint may carry fused-kernel state or old rotary buffers: not parameters.
    _keys_to_ignore_on_load_unexpected = [r".*\._extra_state$", r".*rotary.*inv_freq$"]

    def __init__(self, config: SumiHFConfig) -> None:
        PreTrainedModel.__init__(self, config)  # nn.Module init + transformers bookkeeping, not sumi's __init__
        self.sumi_config = config.to_sumi_config()
        self.model = SumiModel(self.sumi_config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_embeddings()
        self.set_attn_implementation(config._attn_implementation or "sdpa")
        self.post_init()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None, *model_args: Any,
                        config: SumiHFConfig | str | Path | None = None, **kwargs: Any) -> SumiHFForMaskGeneration:
        """transformers' ``from_pretrained``, with a streaming fast path for plain loads of a local directory.

        When the call asks only for things the release layout needs (a local model directory, optional
        ``dtype``/``torch_dtype``, ``attn_implementation``; no ``device_map``, quantization, extra config
        overrides or ``state_dict``), weights are read shard by shard with :func:`sumi.checkpoint.load_model`:
        the peak memory is one model copy plus one tensor, whatever the stored dtype. transformers' own loader
        keeps every shard mapped until the end, which costs an extra copy of the checkpoint when the dtype
        changes (``bench/load_memory.py``). Everything else goes to transformers unchanged.

        ``dtype`` follows transformers: ``None``/``"auto"`` keeps the stored dtype (``config.json``'s ``dtype``).
        """
        path = Path(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if path is None or model_args or not _plain_load(path, kwargs) or not _same_config(config, path):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        return cls._stream_load(path, config if isinstance(config, SumiHFConfig) else None, kwargs)

    @classmethod
    def _stream_load(cls, path: Path, config: SumiHFConfig | None, kwargs: dict[str, Any]) -> SumiHFForMaskGeneration:
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if dtype is None or dtype == "auto":
            dtype = _auto_dtype(path)
        plain = load_model(path, dtype=resolve_dtype(dtype))
        if config is None:
            config = SumiHFConfig.from_sumi_config(plain.config)
        attn = kwargs.get("attn_implementation") or config._attn_implementation or "sdpa"
        if attn not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"unknown attention implementation {attn!r} for sumi; use one of {ATTN_IMPLEMENTATIONS}")
        config._attn_implementation = attn
        config.dtype = plain.lm_head.weight.dtype
        config.name_or_path = str(path)
        with torch.device("meta"):  # shapes only: the loaded modules replace these
            model = cls(config)
        model.model, model.lm_head = plain.model, plain.lm_head
        if plain.generation_config is not None:
            model.generation_config = plain.generation_config
        model.set_attn_implementation(attn)
        model.eval()
        return model

    @classmethod
    def can_generate(cls) -> bool:
        """True: ``generate`` is the release's diffusion sampler (so transformers loads generation_config.json)."""
        return True

    # ------------------------------------------------------------------ transformers hooks
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Per-module init transformers runs for tensors a checkpoint did not provide (RoPE tables included)."""
        if isinstance(module, RotaryEmbedding):
            module.init_tables()
            return
        super()._init_weights(module)

    def init_weights(self, seed: int | None = None) -> None:
        """sumi's initialisation (seeded normal, depth-scaled residual projections), then tie if configured."""
        SumiForMaskGeneration.init_weights(self, seed=seed)
        self.tie_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_attn_implementation(self, name: str, allow_all_kernels: bool = False) -> None:
        """``"sdpa"`` or ``"eager"``: both compute the off-by-one softmax (no flash/flex kernel has the sink)."""
        if name not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"unknown attention implementation {name!r} for sumi; use one of {ATTN_IMPLEMENTATIONS}")
        SumiForMaskGeneration.set_attn_implementation(self, name)
        self.config._attn_implementation_internal = name

    # ------------------------------------------------------------------ sumi views
    def to_sumi(self) -> SumiForMaskGeneration:
        """A plain :class:`SumiForMaskGeneration` that shares this model's parameters (no copy)."""
        with torch.device("meta"):
            plain = SumiForMaskGeneration(self.sumi_config)
        plain.model = self.model
        plain.lm_head = self.lm_head
        plain.train(self.training)
        return plain

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: str | Path,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = True,
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> Path | None:
        """Write the release layout (sumi's :func:`sumi.checkpoint.save_model`): release config keys, tensor
        names and shard naming. Accepts transformers' ``is_main_process`` / ``state_dict`` / ``max_shard_size``
        so ``Trainer`` can call it; pickled (``safe_serialization=False``) and hub pushes are refused.
        """
        if push_to_hub:
            raise InputError("save_pretrained(push_to_hub=True) is not supported; save, then `hf upload DIR`")
        if not safe_serialization:
            raise InputError("sumi writes safetensors only (safe_serialization=False is not supported)")
        if kwargs:
            logger.debug("save_pretrained ignores transformers options %s", sorted(kwargs))
        if not is_main_process:
            return None
        view = _StateView(self.sumi_config, state_dict if state_dict is not None else self.state_dict())
        return save_model(view, save_directory, max_shard_size=max_shard_size, dtype=dtype)


# from_pretrained options the streaming path understands (the rest are hub/remote-code plumbing it can ignore
# for a local directory); any other option sends the call to transformers' loader.
_STREAMABLE_KWARGS = frozenset({
    "dtype", "torch_dtype", "attn_implementation", "trust_remote_code", "_from_auto", "_from_pipeline",
    "adapter_kwargs", "local_files_only", "revision", "cache_dir", "force_download", "token", "proxies",
    "use_safetensors", "weights_only", "low_cpu_mem_usage",
})


def _plain_load(path: Path, kwargs: dict[str, Any]) -> bool:
    if not path.is_dir() or not is_model_dir(path) or set(kwargs) - _STREAMABLE_KWARGS:
        return False
    if kwargs.get("adapter_kwargs") and kwargs["adapter_kwargs"].get("_adapter_model_path"):
        return False  # a PEFT adapter rides on this load: transformers handles it
    if kwargs.get("use_safetensors") is False:
        return False
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    return dtype is None or isinstance(dtype, str | torch.dtype)  # a per-module dtype dict needs transformers


def _auto_dtype(path: Path) -> torch.dtype:
    """transformers' ``dtype="auto"``: config.json's ``dtype`` (or ``torch_dtype``), else the first tensor's."""
    import json


    raw = json.loads((path / "config.json").read_text())
    stored = raw.get("dtype", raw.get("torch_dtype"))
    if isinstance(stored, str) and stored != "auto":
        return resolve_dtype(stored)
    for _, tensor, _ in iter_checkpoint_tensors(path):
        return tensor.dtype
    return torch.float32


def _same_config(config: SumiHFConfig | str | Path | None, path: Path) -> bool:
    """True when ``config`` adds nothing to the directory's config.json (so reading that file is equivalent)."""
    if config is None:
        return True
    if not isinstance(config, SumiHFConfig):
        return False
    ignore = ("dtype", "transformers_version")
    given = {k: v for k, v in config.to_dict().items() if k not in ignore}
    on_disk = {k: v for k, v in SumiConfig.from_json_file(path).to_dict().items() if k not in ignore}
    return given == on_disk


class _StateView:
    """What :func:`sumi.checkpoint.save_model` reads from a model: ``config`` and ``state_dict()``."""

    def __init__(self, config: SumiConfig, state: dict[str, torch.Tensor]) -> None:
        self.config = config
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def hf_config_from_dir(directory: str | Path) -> SumiHFConfig:
    """Read a release ``config.json`` into :class:`SumiHFConfig` (ConfigError on a bad file)."""
    return SumiHFConfig.from_sumi_config(SumiConfig.from_json_file(directory))


__all__ = ["SumiHFConfig", "SumiHFForMaskGeneration", "hf_config_from_dir"]
