"""Reading ``torch.distributed.checkpoint`` (DCP) directories without running code from them.

Stock DCP unpickles a checkpoint's ``.metadata`` with :func:`pickle.load` and its non-tensor entries (optimizer
hyper-parameters, …) with ``torch.load(weights_only=False)``: a crafted checkpoint runs arbitrary code when it
is loaded. Every sumi path that reads DCP (``sumi convert``, ``--from megatron``, ``sumi train --resume``,
``model.init_from``) goes through this module instead:

- ``.metadata`` is read by :class:`MetadataUnpickler`, which admits only the classes DCP's own metadata is made
  of (dataclasses and enums of ``torch.distributed.checkpoint``, ``torch.Size``, dtypes, layouts, paths) and
  refuses every other global; the result must be a ``Metadata`` whose data files lie inside the directory.
- non-tensor entries are read with ``torch.load(weights_only=True)`` (plain numbers, strings, lists, dicts).
- every failure, including torch's ``CheckpointException`` (a ``BaseException``, not an ``Exception``), becomes a
  :class:`~sumi.errors.CheckpointError` naming the directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
from pathlib import Path, PurePath
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import ReadItem

from sumi.errors import CheckpointError

METADATA_FILE = ".metadata"
CHECKSUM_FILE = "checksums.json"
CHECKSUM_FORMAT = "sumi-checkpoint-checksums"

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a DCP ``.metadata`` pickle may reference."""
    if not _ALLOWED_GLOBALS:
        import pathlib

        from torch.distributed.checkpoint import filesystem, metadata

        for name in ("Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorStorageMetadata",
                     "TensorProperties", "BytesStorageMetadata", "StorageMeta", "_MEM_FORMAT_ENCODING"):
            if hasattr(metadata, name):
                _ALLOWED_GLOBALS[(_DCP_METADATA, name)] = getattr(metadata, name)
        _ALLOWED_GLOBALS[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
        _ALLOWED_GLOBALS[("torch", "Size")] = torch.Size
        _ALLOWED_GLOBALS[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
        for name, value in vars(torch).items():
            if isinstance(value, torch.dtype | torch.memory_format):
                _ALLOWED_GLOBALS[("torch", name)] = value
        for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"):
            _ALLOWED_GLOBALS[("pathlib", name)] = getattr(pathlib, name)
        _ALLOWED_GLOBALS[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    return _ALLOWED_GLOBALS


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; any global outside :func:`_allowed` raises ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: it is not part of DCP "
                                         "checkpoint metadata") from None


def _check_storage_paths(metadata: Metadata, path: Path) -> None:
    for info in (metadata.storage_data or {}).values():
        relative = getattr(info, "relative_path", None)
        parts = PurePath(str(relative)).parts if relative is not None else ()
        if (not isinstance(relative, str) or not parts or PurePath(relative).is_absolute()
                or any(p in ("..", ".") for p in parts) or len(parts) != 1):
            raise CheckpointError(f"{path}/{METADATA_FILE} points at data file {relative!r} outside the checkpoint "
                                  "directory; refusing to read it")


def read_metadata(path: str | Path) -> Metadata:
    """The ``Metadata`` of the DCP directory ``path``, read without executing code; CheckpointError if not valid."""
    path = Path(path)
    file = path / METADATA_FILE
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path} is not a readable DCP checkpoint ({exc})") from exc
    try:
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # UnpicklingError, EOFError on truncation, TypeError from a forged REDUCE, …
        raise CheckpointError(f"{file} is not valid DCP checkpoint metadata ({type(exc).__name__}: {exc}); the "
                              "checkpoint is damaged or was not written by torch.distributed.checkpoint") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{file} does not hold DCP checkpoint metadata (found {type(metadata).__name__})")
    _check_storage_paths(metadata, path)
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata goes through :func:`read_metadata` (ranked metadata is refused)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"{self.path}: per-rank DCP metadata is not supported")
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that reads non-tensor entries with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load(state: dict[str, Any], path: str | Path, *, what: str = "checkpoint", verify: bool = True) -> None:
    """``dcp.load(state, path)`` in place with the safe reader and planner; CheckpointError on any failure.

    With ``verify`` the directory's files are first checked against its ``checksums.json`` (when it has one).

    A mismatch (missing key, different shapes after a model-size change, a truncated data file) raises
    torch's ``CheckpointException``, which is not an ``Exception`` subclass; it is caught here too.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if verify:
        verify_checksums(path)
    try:
        with warnings.catch_warnings():  # one process without a process group is an intended use
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), planner=SafeLoadPlanner())
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"cannot load {what} {path}: {describe(exc)}; it is damaged or does not match the "
                              "model (same architecture? see its config.yaml)") from None


def describe(exc: BaseException, limit: int = 400) -> str:
    """One line of an exception (DCP's CheckpointException embeds per-rank tracebacks)."""
    if isinstance(exc, CheckpointException):
        causes = [f"{type(pair[0]).__name__}: {pair[0]}" for pair in exc.failures.values()]
        text = "; ".join(causes) or str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    first = " ".join(text.split("Traceback")[0].split())
    return first[:limit] + ("…" if len(first) > limit else "")


# ---------------------------------------------------------------------------------------------- checksums
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(path: str | Path) -> Path:
    """Record size and sha256 of every file in the checkpoint directory ``path`` in ``checksums.json``."""
    from sumi._io import atomic_write_text

    path = Path(path)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(path.iterdir()) if p.is_file() and p.name != CHECKSUM_FILE}
    out = path / CHECKSUM_FILE
    atomic_write_text(out, json.dumps({"format": CHECKSUM_FORMAT, "files": files}, indent=1))
    return out


def checksummed_files(path: str | Path) -> dict[str, dict[str, Any]] | None:
    """``{file name: {"bytes", "sha256"}}`` from ``checksums.json``, or None when the checkpoint has none."""
    file = Path(path) / CHECKSUM_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_bytes())
        files = data["files"]
        if data.get("format") != CHECKSUM_FORMAT or not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
                for v in files.values()):
            raise ValueError("unexpected layout")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is damaged ({exc}); the checkpoint cannot be verified") from None
    return files


def verify_checksums(path: str | Path, names: list[str] | None = None) -> bool:
    """Check the files ``names`` (default: all listed) against ``checksums.json``; CheckpointError on a mismatch.

    Returns False (and checks nothing) when the checkpoint has no ``checksums.json`` (older sumi versions).
    """
    path = Path(path)
    files = checksummed_files(path)
    if files is None:
        return False
    for name in files if names is None else names:
        expected, target = files[name], path / name
        if PurePath(name).name != name or not target.is_file():
            raise CheckpointError(f"{path}: {name} listed in {CHECKSUM_FILE} is missing; the checkpoint is "
                                  "incomplete — resume from an earlier one")
        size = target.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{target} has {size} bytes but {CHECKSUM_FILE} says {expected['bytes']}: it is "
                                  "truncated or replaced; resume from an earlier checkpoint")
        if _sha256(target) != expected["sha256"]:
            raise CheckpointError(f"{target} fails its sha256 checksum: the file is corrupted; resume from an "
                                  "earlier checkpoint")
    return True
