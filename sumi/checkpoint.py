"""Model directories in the release layout (``tohoku-nlp/sumi-7b``): load, save, validate.

A model directory holds ``config.json``, ``generation_config.json``, the weights as ``model.safetensors`` or as
``model-0000k-of-0000n.safetensors`` shards plus ``model.safetensors.index.json`` (``weight_map``: tensor name →
shard file), and, when saved with one, the tokenizer files. Loading reads safetensors only (never pickles),
shard by shard, so peak memory stays near one model copy plus one tensor. Every problem (missing file, missing or
unexpected tensor, wrong shape, truncated or corrupt shard) raises :class:`CheckpointError` naming the file and
the tensor.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sumi._io import atomic_write_text
from sumi.config import CONFIG_NAME, SumiConfig
from sumi.errors import CheckpointError, ConfigError, InputError
from sumi.model import SumiForMaskGeneration
from sumi.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = "model-{index:05d}-of-{total:05d}.safetensors"
# Keys a converted checkpoint may carry that are not parameters (e.g. a fused kernel's _extra_state).
IGNORED_KEY_PATTERNS = (re.compile(r".*\._extra_state$"), re.compile(r".*rotary.*inv_freq$"))
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(size: int | str) -> int:
    """``"5GB"`` / ``"200MiB"`` / ``1000000`` → bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", size)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"cannot parse size {size!r}; write e.g. '5GB', '500MB' or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key in ("auto",):
        return None
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[key]


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, … as a torch.device; InputError for a name torch does not know or a
    device this machine lacks."""
    if isinstance(device, torch.device):
        return device
    try:
        resolved = torch.device(device or "cpu")
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: CUDA is not available on this machine; use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type not in ("cpu", "mps"):
        raise InputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return resolved


def _is_ignored(name: str) -> bool:
    return any(p.fullmatch(name) for p in IGNORED_KEY_PATTERNS)


# ---------------------------------------------------------------------------------------------- reading
def weight_files(directory: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it (from the index, or the single file)."""
    index = directory / INDEX_FILE
    single = directory / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map must map tensor names to file names")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {exc}") from exc
        outside = sorted({f for f in weight_map.values() if Path(f).name != f or f in ("", ".", "..")})
        if outside:
            raise CheckpointError(f"{index} points at {outside[:3]}, outside the model folder {directory}; an "
                                  "index may only name shard files next to it")
        files = {name: directory / fname for name, fname in weight_map.items()}
        for fname in sorted(set(files.values())):
            if not fname.is_file():
                raise CheckpointError(f"{index} lists shard {fname.name}, but that file is missing in {directory}")
        return files
    if single.is_file():
        return {name: single for name in _tensor_names(single)}
    raise CheckpointError(
        f"no weights in {directory}: expected {SINGLE_FILE} or {INDEX_FILE} with model-*.safetensors shards"
    )


def _tensor_names(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"cannot read {path}: the file is truncated or not a safetensors file ({exc})") from exc


def iter_checkpoint_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (name, tensor, file) one tensor at a time, shard by shard (bounded memory)."""
    directory = Path(directory)
    by_file: dict[Path, list[str]] = {}
    for name, path in weight_files(directory).items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        size = path.stat().st_size
        try:
            with safe_open(str(path), framework="pt") as f:
                available = set(f.keys())
                for name in names:
                    if name not in available:
                        raise CheckpointError(f"tensor {name!r} is listed in the index but missing from {path.name}")
                    yield name, f.get_tensor(name), path
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"cannot read {path} ({size} bytes): truncated or corrupt safetensors file ({exc})"
            ) from exc


def load_model(path: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None, *, strict: bool = True,
               model_class: type[SumiForMaskGeneration] = SumiForMaskGeneration) -> SumiForMaskGeneration:
    """Load a model directory in the release layout into ``model_class`` (default the plain
    :class:`sumi.model.SumiForMaskGeneration`; ``sumi.load_model`` asks for :class:`sumi.release.Sumi`).

    Args:
        path: directory with config.json and safetensors weights (single or sharded).
        device: target device (default CPU).
        dtype: parameter dtype; default keeps the stored dtype, except that bf16/fp16 weights are upcast to
            fp32 on CPU (half-precision matmuls are ~100× slower than fp32 on CPUs without AVX-512 BF16).
        strict: reject unexpected tensors (missing ones are always an error).
    """
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(f"model directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the folder holding {CONFIG_NAME}")
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}: it is not a sumi/Hugging Face model directory")
    try:
        config = SumiConfig.from_json_file(directory / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from exc
    if config.model_type != "sumi":
        raise CheckpointError(f"{directory} holds model_type={config.model_type!r}, not a sumi model")
    device = resolve_device(device)
    target_dtype = resolve_dtype(dtype)
    check_config_against_weights(config, directory)

    with torch.device("meta"):
        model = model_class(config)
    expected = {name: p for name, p in model.state_dict().items()}
    seen: set[str] = set()
    unexpected: list[str] = []
    materialised: dict[str, torch.Tensor] = {}
    for name, tensor, file in iter_checkpoint_tensors(directory):
        if name not in expected:
            if _is_ignored(name):
                continue
            unexpected.append(f"{name} (in {file.name})")
            continue
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"tensor {name} in {file.name} has shape {tuple(tensor.shape)}, but config.json implies {want}"
            )
        if target_dtype is None:
            use = tensor.dtype
            if device.type == "cpu" and tensor.dtype in (torch.bfloat16, torch.float16):
                use = torch.float32
        else:
            use = target_dtype
        materialised[name] = tensor.to(device=device, dtype=use)
        seen.add(name)
    missing = sorted(set(expected) - seen)
    if config.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    if missing:
        raise CheckpointError(
            f"{directory} is missing {len(missing)} tensor(s) the config needs, e.g. {missing[:5]}"
        )
    if unexpected and strict:
        raise CheckpointError(f"{directory} has unexpected tensor(s) {unexpected[:5]}; pass strict=False to skip")
    model.load_state_dict(materialised, assign=True, strict=not config.tie_word_embeddings)
    model.tie_embeddings()
    model.model.rotary.init_tables(device)  # derived, not stored: built on the target device
    model.generation_config = read_generation_config(directory)
    model.eval()
    return model


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def check_config_against_weights(config: SumiConfig, directory: Path) -> None:
    """Compare config.json with the weight files' headers before anything is allocated.

    A config whose sizes the stored tensors do not have (e.g. ``num_hidden_layers`` 1e9 next to 2 layers of
    weights) raises :class:`CheckpointError` naming both, instead of building a huge model first. Only the
    safetensors headers are read.
    """
    files = weight_files(directory)
    layers = {int(m.group(1)) for name in files if (m := _LAYER.match(name))}
    if not all(i in layers for i in range(min(config.num_hidden_layers, len(layers) + 1))):  # extra: reported later
        found = f"{len(layers)} layers (indices {min(layers)}..{max(layers)})" if layers else "no layers"
        raise CheckpointError(f"{directory / CONFIG_NAME} says num_hidden_layers={config.num_hidden_layers} but the "
                              f"weights hold {found}; the config does not belong to these weights")
    hd, d = config.resolved_head_dim, config.hidden_size
    expected = {"model.embed_tokens.weight": (config.vocab_size, d),
                "model.layers.0.self_attn.q_proj.weight": (config.num_attention_heads * hd, d),
                "model.layers.0.self_attn.k_proj.weight": (config.num_key_value_heads * hd, d),
                "model.layers.0.mlp.gate_proj.weight": (config.intermediate_size, d)}
    for name, shape in expected.items():
        if name not in files:
            continue  # reported as missing by load_model
        try:
            with safe_open(str(files[name]), framework="pt") as f:
                stored = tuple(f.get_slice(name).get_shape())
        except Exception as exc:
            raise CheckpointError(f"cannot read {files[name]}: truncated or corrupt safetensors file ({exc})") from None
        if stored != shape:
            raise CheckpointError(f"tensor {name} in {files[name].name} has shape {stored}, but config.json implies "
                                  f"{shape}; the config does not belong to these weights")


def read_generation_config(directory: str | Path):
    """The directory's ``generation_config.json`` as a ``transformers.GenerationConfig`` (None without one);
    ``model.generate`` lets its explicit fields override the release's defaults."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return None
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid generation config: {exc}") from exc


# ---------------------------------------------------------------------------------------------- writing
def is_weight_file(name: str) -> bool:
    """True for the files a save replaces: the single file, the index and ``model-*-of-*`` shards."""
    return name in (SINGLE_FILE, INDEX_FILE) or re.fullmatch(r"model-\d+-of-\d+\.safetensors", name) is not None


def save_model(model, directory: str | Path, *, max_shard_size: int | str = "5GB",
               dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model`` in the release layout; shards when the weights exceed ``max_shard_size``.

    The new directory is built aside and swapped in whole (:func:`sumi._io.staged_directory`): on a full disk or
    an interrupt the old weights stay in place. Files of the old directory other than weights (tokenizer,
    README, …) are carried over unless the new save writes them.
    """
    from sumi._io import staged_directory

    directory = Path(directory)
    with output_errors(directory), staged_directory(directory, keep=lambda name: not is_weight_file(name)) as tmp:
        _write_model(model, tmp, parse_size(max_shard_size), resolve_dtype(dtype))
    return directory


def _write_model(model, directory: Path, limit: int, target_dtype: torch.dtype | None) -> None:
    state = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        tensor = tensor.detach().to("cpu")
        state[name] = (tensor.to(target_dtype) if target_dtype else tensor).contiguous()

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += nbytes

    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], directory / SINGLE_FILE, metadata=metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = SHARD_PATTERN.format(index=i, total=len(shards))
            save_file(shard, directory / fname, metadata=metadata)
            weight_map.update({name: fname for name in shard})
        total_size = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    config = model.config
    saved_dtype = next(iter(state.values())).dtype if state else torch.float32
    dtype_name = {v: k for k, v in _DTYPES.items()}.get(saved_dtype, config.dtype)
    # The model's own generate defaults (read from its directory, or changed since) are kept, not reset to T = 1.
    generation = getattr(model, "generation_config", None)
    config.replace(dtype=dtype_name, extra={**config.extra, "auto_map": REMOTE_CODE_AUTO_MAP}).save(
        directory, generation=generation.to_diff_dict() if generation is not None else None)
    write_remote_code(directory)


REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_sumi.SumiConfig",
    "AutoModel": "modeling_sumi.SumiForMaskGeneration",
    "AutoModelForMaskGeneration": "modeling_sumi.SumiForMaskGeneration",
}
"""config.json's ``auto_map``: the release's file and class names, served by the files :func:`write_remote_code`
copies, so transformers alone loads a sumi directory with ``trust_remote_code=True``."""


def write_remote_code(directory: Path) -> None:
    """Copy the standalone ``configuration_sumi.py`` / ``modeling_sumi.py`` (torch + transformers only, from
    ``sumi/assets/remote_code``) into a model directory."""
    source = Path(__file__).parent / "assets" / "remote_code"
    for name in ("configuration_sumi.py", "modeling_sumi.py"):
        atomic_write_text(directory / name, (source / name).read_text(encoding="utf-8"))


@contextmanager
def output_errors(target: Path) -> Iterator[None]:
    """Turn a full disk or an unwritable path while writing ``target`` into a one-line CheckpointError."""
    from sumi._io import output_failure

    try:
        yield
    except Exception as exc:
        reason = output_failure(exc)
        if reason is None:
            raise
        raise CheckpointError(f"cannot write {target}: {reason}; the previous contents, if any, are untouched — "
                              "free space or choose another output path") from None


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` looks like a model directory (config.json plus safetensors weights)."""
    p = Path(path)
    return (p / CONFIG_NAME).is_file() and ((p / SINGLE_FILE).is_file() or (p / INDEX_FILE).is_file())


def resolve_model(model, tokenizer=None, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | str | None = None, adapter: str | Path | None = None):
    """(model, tokenizer) from objects or a self-contained model directory — what every command needs.

    ``model`` is a loaded model or a directory (config.json + safetensors + tokenizer.json); ``tokenizer`` a
    :class:`~sumi.tokenizer.SumiTokenizer`, a path/name for :func:`~sumi.tokenizer.load_tokenizer`, or None
    (the model directory's own). A directory that is not a sumi model raises :class:`CheckpointError`.
    ``adapter``: a LoRA adapter directory (PEFT format, from ``sumi finetune``) merged into the model.
    """
    if isinstance(model, str | Path):
        path = Path(model)
        if not is_model_dir(path):
            raise CheckpointError(
                f"{path} is not a sumi model directory (it needs config.json and model.safetensors or a "
                "sharded index); pass the folder written by save_pretrained / `sumi train`"
            )
        if tokenizer is None:
            if not (path / "tokenizer.json").is_file():
                raise CheckpointError(f"{path} holds no tokenizer.json; pass a tokenizer explicitly")
            tokenizer = path
        model = load_model(path, device=device, dtype=dtype)
    if adapter is not None:
        from sumi.finetune.lora import load_adapter, merge

        model = merge(load_adapter(model, adapter)).eval()
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(tokenizer)
    return model, tokenizer
