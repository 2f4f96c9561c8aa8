"""Megatron-LM (Megatron-Core GPT) checkpoints -> sumi's release tensor names.

Megatron-Core stores a GPT model with fused projections (``docs/interop.md`` has the full table):

* ``self_attention.linear_qkv.weight`` [(H + 2·Hkv)·hd, d] — Q, K and V fused *per key/value group*: viewed as
  [Hkv, q_per_kv + 2, hd, d], group g holds its q_per_kv query heads, then its key head, then its value head.
* ``mlp.linear_fc1.weight`` [2·I, d] — SwiGLU's gate and up projections stacked as [gate; up].
* RMSNorm gains fused into the following linear layer (``linear_qkv.layer_norm_weight``,
  ``linear_fc1.layer_norm_weight``, Transformer-Engine layers) or standalone (``input_layernorm.weight``,
  ``pre_mlp_layernorm.weight``, local layers).
* ``embedding.word_embeddings.weight`` / ``output_layer.weight`` padded to a multiple of the tensor-parallel
  vocabulary divisor: rows beyond ``config.vocab_size`` are cut.
* ``*._extra_state`` (Transformer-Engine FP8 metadata) carries no weights and is ignored.

Two on-disk forms are read: the ``torch_dist`` format (a DCP directory; Megatron-Core stacks the layers, so
``decoder.layers.<name>`` has a leading [num_layers] axis) and the legacy ``model_optim_rng.pt`` (read with
``torch.load(weights_only=True)`` only; a file that needs arbitrary unpickling is refused with a clear error).
Only unsplit checkpoints (tensor and pipeline parallel 1) are supported.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

import sumi.convert.dcp as dcp_io
from sumi.config import SumiConfig
from sumi.errors import CheckpointError

logger = logging.getLogger(__name__)

LEGACY_FILE = "model_optim_rng.pt"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_PREFIXES = ("module.", "model.")
# (Megatron names inside a layer, sumi name inside a layer); alternatives for TE-fused and local layer specs.
_LAYER_COPIES = {
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_INPUT_NORM = ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight")
_MLP_NORM = ("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight")
_GLOBAL_COPIES = {"decoder.final_layernorm.weight": "model.norm.weight"}


# ---------------------------------------------------------------------------------------------- reading
def find_checkpoint(path: str | Path) -> Path:
    """The file or DCP directory holding the weights: follows ``latest_checkpointed_iteration.txt`` and
    ``iter_XXXXXXX/mp_rank_00``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"Megatron checkpoint not found: {path}")
    tracker = path / TRACKER_FILE
    if tracker.is_file():
        iteration = tracker.read_bytes().decode("utf-8", "replace").strip()
        if iteration != "release" and not (iteration.isascii() and iteration.isdigit() and len(iteration) < 12):
            raise CheckpointError(f"{tracker} should hold an iteration number or 'release', got {iteration[:40]!r}")
        name = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
        return find_checkpoint(path / name)
    if dcp_io.is_dcp_dir(path):
        return path
    if (path / LEGACY_FILE).is_file():
        return path / LEGACY_FILE
    ranks = sorted(p for p in path.glob("mp_rank_*") if p.is_dir())
    if len(ranks) == 1:
        return find_checkpoint(ranks[0])
    if len(ranks) > 1:
        raise CheckpointError(
            f"{path} is split over {len(ranks)} tensor/pipeline-parallel ranks ({ranks[0].name}…); merge them "
            "into one rank with Megatron's checkpoint converter (target TP=PP=1) or save with "
            "--ckpt-format torch_dist, then convert"
        )
    raise CheckpointError(f"{path} holds no Megatron checkpoint: expected a torch_dist directory (.metadata), "
                          f"{LEGACY_FILE}, an iter_* directory or {TRACKER_FILE}")


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a Megatron checkpoint (torch_dist directory or legacy .pt), by Megatron name."""
    source = find_checkpoint(path)
    if source.is_dir():
        def select(key: str) -> str | None:
            if key.startswith(("optimizer.", "rng_state", "rerun_state")) or "_extra_state" in key:
                return None
            return key

        state = dcp_io.load_tensors(source, select)
    else:
        state = _load_legacy(source)
    if not state:
        raise CheckpointError(f"{source} contains no model tensors")
    return state


def _load_legacy(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:  # memory-map the zip archive: tensors are paged in as the mapping reads them
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            blob = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip torch.save format
    except Exception as exc:  # weights_only refuses arbitrary objects (argparse.Namespace args, …)
        raise CheckpointError(
            f"{path} cannot be read with torch.load(weights_only=True), which sumi requires for safety: {exc}. "
            "It pickles Python objects besides tensors (typically the run's argparse 'args'). Re-save it as "
            "torch_dist (Megatron: --ckpt-format torch_dist, or tools/checkpoint/convert.py), or extract "
            "the model state dict into a weights-only file in a trusted environment"
        ) from exc
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        blob = blob["model"]
    elif isinstance(blob, dict) and any(k.startswith("model") and k[5:].isdigit() for k in blob):
        raise CheckpointError(f"{path} holds virtual-pipeline chunks (model0, model1, …); merge them first")
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(blob).__name__})")
    return {k: v for k, v in blob.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


# ---------------------------------------------------------------------------------------------- mapping
def _canonical(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, drop ``_extra_state`` and split Megatron-Core's stacked layer tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if "_extra_state" in key:
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix) and not key.startswith("model.layers"):
                key = key[len(prefix):]
        if key.startswith("decoder.layers.") and not _LAYER.match(key):
            rest = key[len("decoder.layers."):]
            if tensor.shape[0] != num_layers:
                raise CheckpointError(
                    f"stacked Megatron tensor {key} has {tensor.shape[0]} layers on its first axis, but the config "
                    f"has num_hidden_layers={num_layers}"
                )
            for layer in range(num_layers):
                out[f"decoder.layers.{layer}.{rest}"] = tensor[layer]
            continue
        out[key] = tensor
    return out


def _pop(state: dict[str, torch.Tensor], names: tuple[str, ...] | str, shape: tuple[int, ...]) -> torch.Tensor:
    names = (names,) if isinstance(names, str) else names
    for name in names:
        if name in state:
            tensor = state.pop(name)
            if tuple(tensor.shape) != shape:
                raise CheckpointError(
                    f"Megatron tensor {name} has shape {tuple(tensor.shape)}, but the config implies {shape}; "
                    "pass the config the checkpoint was trained with (--config)"
                )
            return tensor
    raise CheckpointError(f"Megatron checkpoint is missing {' or '.join(names)}")


def _pop_vocab(state: dict[str, torch.Tensor], name: str, config: SumiConfig) -> torch.Tensor:
    if name not in state:
        raise CheckpointError(f"Megatron checkpoint is missing {name}")
    tensor = state.pop(name)
    v, d = config.vocab_size, config.hidden_size
    if tensor.dim() != 2 or tensor.shape[1] != d or tensor.shape[0] < v:
        raise CheckpointError(
            f"Megatron tensor {name} has shape {tuple(tensor.shape)}; expected [padded_vocab >= {v}, {d}] "
            "(vocab_size and hidden_size of --config)"
        )
    if tensor.shape[0] > v:
        logger.info("%s: cutting the padded vocabulary %d -> %d", name, tensor.shape[0], v)
    return tensor[:v]


def split_qkv(fused: torch.Tensor, config: SumiConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's GQA-grouped ``linear_qkv.weight`` [(H + 2·Hkv)·hd, d] -> (q [H·hd, d], k, v [Hkv·hd, d])."""
    h, hkv, hd, d = (config.num_attention_heads, config.num_key_value_heads, config.resolved_head_dim,
                     config.hidden_size)
    q_per_kv = h // hkv
    grouped = fused.view(hkv, q_per_kv + 2, hd, d)
    q = grouped[:, :q_per_kv].reshape(h * hd, d)
    k = grouped[:, q_per_kv].reshape(hkv * hd, d)
    v = grouped[:, q_per_kv + 1].reshape(hkv * hd, d)
    return q, k, v


def to_release_state(megatron_state: dict[str, torch.Tensor], config: SumiConfig) -> dict[str, torch.Tensor]:
    """Map a Megatron-Core GPT state dict to sumi's release tensor names (see the module docstring).

    Every Megatron tensor must be used: a leftover (a bias, an unknown layer) is an error, because sumi's
    architecture would silently drop what it cannot represent.
    """
    state = _canonical(megatron_state, config.num_hidden_layers)
    h, hkv, hd, d, i = (config.num_attention_heads, config.num_key_value_heads, config.resolved_head_dim,
                        config.hidden_size, config.intermediate_size)
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": _pop_vocab(state, "embedding.word_embeddings.weight",
                                                                            config)}
    for layer in range(config.num_hidden_layers):
        src, dst = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        fused_qkv = _pop(state, src + "self_attention.linear_qkv.weight", ((h + 2 * hkv) * hd, d))
        q, k, v = split_qkv(fused_qkv, config)
        out[dst + "self_attn.q_proj.weight"] = q
        out[dst + "self_attn.k_proj.weight"] = k
        out[dst + "self_attn.v_proj.weight"] = v
        fc1 = _pop(state, src + "mlp.linear_fc1.weight", (2 * i, d))
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = fc1[:i], fc1[i:]
        out[dst + "self_attn.o_proj.weight"] = _pop(state, src + "self_attention.linear_proj.weight", (d, h * hd))
        out[dst + "mlp.down_proj.weight"] = _pop(state, src + "mlp.linear_fc2.weight", (d, i))
        out[dst + "input_layernorm.weight"] = _pop(state, tuple(src + n for n in _INPUT_NORM), (d,))
        out[dst + "post_attention_layernorm.weight"] = _pop(state, tuple(src + n for n in _MLP_NORM), (d,))
    for megatron_name, name in _GLOBAL_COPIES.items():
        out[name] = _pop(state, megatron_name, (d,))
    if "output_layer.weight" in state:
        out["lm_head.weight"] = _pop_vocab(state, "output_layer.weight", config)
    elif not config.tie_word_embeddings:
        raise CheckpointError("Megatron checkpoint has no output_layer.weight but the config has "
                              "tie_word_embeddings=false (was it trained with tied embeddings?)")
    if state:
        extra = sorted(state)
        raise CheckpointError(
            f"{len(extra)} Megatron tensor(s) have no place in a Sumi model, e.g. {extra[:5]} (biases, extra "
            "layers or a different architecture); check --config"
        )
    return {name: tensor.contiguous() for name, tensor in out.items()}


def looks_like_megatron(keys) -> bool:
    return any(re.sub(r"^(module\.|model\.)", "", k).startswith(("decoder.layers", "embedding.word_embeddings"))
               for k in keys)
