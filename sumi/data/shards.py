"""Tokenise a mixture into packed, memory-mapped token shards with an index and a manifest.

Layout of a shard directory (all written to a temporary sibling folder, then renamed into place, so a killed
build never leaves a half-written directory behind):

- ``tokenizer.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json``): the tokenizer used.
- ``{split}-{k:05d}.bin``: raw little-endian ``uint16`` (vocab <= 65,536) or ``uint32`` tokens, a C-order
  ``[num_canvases, seq_len]`` array; ``split`` is ``train`` or ``heldout``.
- ``{split}.index.npy``: ``int64 [num_documents, 3]`` rows ``(source index, document index within the source,
  offset of the document's BOS in the split's token stream)``, in stream order.
- ``manifest.json``: format version, seq_len, dtype, seed, tokenizer (vocab size, special ids, sha256),
  per-source document and token counts, per split the canvases, pad tokens and each file's size and sha256.

Packing (spec §3): each document is ``BOS + tokens + EOS``, documents follow each other (so canvases read
``… EOS BOS …`` at document joins) and the stream is cut into canvases of ``seq_len`` tokens; only the final
canvas of a split is right-padded with PAD. Held-out documents are chosen by seed before up-sampling, so no
document is in both splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sumi.data.mixture import MixtureSpec
from sumi.errors import ConfigError, InputError
from sumi.tokenizer import SumiTokenizer

logger = logging.getLogger(__name__)

FORMAT = "sumi-packed-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
_ENCODE_BATCH_CHARS = 4_000_000  # text handed to one encode_batch call: big enough to keep all threads busy
_SHARD_BYTES = 1 << 28  # 256 MiB per shard file


class ShardError(InputError):
    """A shard directory is missing files, or its files do not match its manifest."""


@dataclass
class ShardFile:
    file: str
    num_canvases: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    num_canvases: int = 0
    num_documents: int = 0
    pad_tokens: int = 0
    max_token_id: int = -1
    index_file: str = ""
    index_sha256: str = ""
    shards: list[ShardFile] = field(default_factory=list)


@dataclass
class Manifest:
    """What a shard directory holds; ``manifest.json`` is this dataclass as JSON."""

    seq_len: int
    dtype: str
    seed: int
    heldout_fraction: float
    tokenizer: dict
    sources: list[dict]
    splits: dict[str, SplitInfo]
    mixture: dict = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    def num_tokens(self, split: str = "train") -> int:
        return self.splits[split].num_canvases * self.seq_len

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> None:
        (Path(directory) / "manifest.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / "manifest.json"
        if not path.is_file():
            raise ShardError(f"{directory} has no manifest.json; build shards with `sumi data build`")
        try:
            data = json.loads(path.read_bytes())
            if data.get("format") != FORMAT:
                raise ShardError(f"{path} is not a sumi shard manifest (format {data.get('format')!r})")
            if data.get("format_version") != FORMAT_VERSION:
                raise ShardError(f"{path} has format_version {data.get('format_version')}; this sumi reads "
                                 f"version {FORMAT_VERSION}. Rebuild the shards")
            splits = {name: SplitInfo(**{**info, "shards": [ShardFile(**s) for s in info["shards"]]})
                      for name, info in data.pop("splits").items()}
            return cls(**data, splits=splits)
        except (ValueError, KeyError, TypeError) as exc:
            raise ShardError(f"{path} is corrupt ({exc}); rebuild the shards") from exc

    def verify(self, directory: str | Path, split: str | None = None, *, checksums: bool = True) -> None:
        """Check each file's size (and sha256 with ``checksums``) against the manifest; raise ShardError."""
        directory = Path(directory)
        itemsize = np.dtype(self.dtype).itemsize
        for name, info in self.splits.items():
            if split is not None and name != split:
                continue
            files = [(s.file, s.bytes, s.sha256) for s in info.shards]
            for file, expected_bytes, expected_sha in files:
                _verify_file(directory / file, expected_bytes, expected_sha if checksums else None)
            if sum(s.num_canvases for s in info.shards) != info.num_canvases or any(
                    s.bytes != s.num_canvases * self.seq_len * itemsize for s in info.shards):
                raise ShardError(f"{directory}/manifest.json: the {name} shard sizes do not add up to "
                                 f"{info.num_canvases} canvases of {self.seq_len}; rebuild the shards")
            index = directory / info.index_file
            if not index.is_file():
                raise ShardError(f"{index} is missing; rebuild the shards")
            if checksums and _sha256(index) != info.index_sha256:
                raise ShardError(f"{index} does not match the manifest's sha256; rebuild the shards")


def _verify_file(path: Path, expected_bytes: int, expected_sha: str | None) -> None:
    if not path.is_file():
        raise ShardError(f"shard {path} is missing; rebuild the shards or restore the file")
    size = path.stat().st_size
    if size != expected_bytes:
        raise ShardError(f"shard {path} has {size} bytes but the manifest says {expected_bytes}; the file is "
                         "truncated or replaced. Rebuild the shards")
    if expected_sha is not None:
        actual = _sha256(path)
        if actual != expected_sha:
            raise ShardError(f"shard {path} fails its checksum (sha256 {actual[:16]}…, manifest "
                             f"{expected_sha[:16]}…); the file was modified or corrupted. Rebuild the shards")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ====================================================================== tokenisation
@dataclass
class _SourceTokens:
    """Tokens of one source's distinct documents, in a temporary flat file."""

    path: Path
    lengths: np.ndarray  # int64 [num_documents]
    offsets: np.ndarray  # int64 [num_documents + 1]


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if chars >= _ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _tokenize_source(source, spec: MixtureSpec, tokenizer: SumiTokenizer, path: Path, dtype: np.dtype,
                     progress) -> _SourceTokens:
    lengths: list[int] = []
    vocab = tokenizer.vocab_size
    with open(path, "wb") as f:
        for batch in _batches(source.iter_documents(spec.base_dir)):
            for ids in tokenizer.encode_batch(batch, parse_special=False):  # documents are plain text
                arr = np.asarray(ids, dtype=np.int64)
                if arr.size and (arr.max() >= vocab or arr.min() < 0):
                    bad = int(arr.max() if arr.max() >= vocab else arr.min())
                    raise InputError(f"source {source.name!r}, document {len(lengths)}: the tokenizer produced "
                                     f"id {bad}, outside its vocabulary [0, {vocab}); the tokenizer files are "
                                     "inconsistent (vocab_size too small for its merges/added tokens)")
                f.write(arr.astype(dtype).tobytes())
                lengths.append(arr.size)
            progress.update(sum(lengths[-len(batch):]))
    if not lengths:
        raise InputError(f"source {source.name!r} yielded no documents (all files/records were empty)")
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_arr)])
    return _SourceTokens(path=path, lengths=lengths_arr, offsets=offsets)


# ====================================================================== planning
def _plan(tokens: list[_SourceTokens], weights: list[float], heldout_fraction: float, seq_len: int,
          seed: int) -> dict[str, np.ndarray]:
    """Documents of each split in stream order: int64 [n, 2] rows (source index, document index).

    Held-out documents are drawn (seeded) without replacement until they fill ``heldout_fraction`` of the
    stream and at least one canvas; train documents are then up/down-sampled by their source weight:
    ``floor(w)`` copies plus one more with probability ``w - floor(w)``.
    """
    all_docs = np.concatenate([np.stack([np.full(len(t.lengths), s), np.arange(len(t.lengths))], axis=1)
                               for s, t in enumerate(tokens)]).astype(np.int64)
    stream_len = np.concatenate([t.lengths for t in tokens]) + 2  # BOS + doc + EOS
    eligible = np.asarray([weights[s] > 0 for s in all_docs[:, 0]])
    heldout_mask = np.zeros(len(all_docs), dtype=bool)
    if heldout_fraction > 0:
        target = max(heldout_fraction * float(stream_len[eligible].sum()), seq_len)
        order = np.random.default_rng([seed, 1]).permutation(len(all_docs))
        taken = 0
        for i in order:
            if taken >= target:
                break
            if eligible[i]:
                heldout_mask[i] = True
                taken += stream_len[i]
    rng = np.random.default_rng([seed, 2])
    w = np.asarray([weights[s] for s in all_docs[:, 0]])
    copies = np.floor(w).astype(np.int64) + (rng.random(len(all_docs)) < (w - np.floor(w)))
    copies[heldout_mask] = 0
    train = np.repeat(all_docs, copies, axis=0)
    train = train[np.random.default_rng([seed, 3]).permutation(len(train))]
    heldout = all_docs[heldout_mask]
    heldout = heldout[np.random.default_rng([seed, 4]).permutation(len(heldout))]
    return {"train": train, "heldout": heldout}


# ====================================================================== writing
class _CanvasWriter:
    """Streams ``BOS doc EOS`` segments into ``seq_len`` canvases, rolling shard files at ``max_canvases``."""

    def __init__(self, directory: Path, split: str, seq_len: int, dtype: np.dtype, pad_id: int,
                 max_canvases: int) -> None:
        self.directory, self.split, self.seq_len, self.dtype = directory, split, seq_len, dtype
        self.pad_id, self.max_canvases = pad_id, max_canvases
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.position = 0  # tokens written to the stream so far (incl. pending)
        self.info = SplitInfo()
        self._file = None
        self._digest = None
        self._in_file = 0

    def add(self, segment: np.ndarray) -> int:
        """Append a segment; returns its offset in the split's stream."""
        start = self.position
        self.pending.append(segment)
        self.pending_len += segment.size
        self.position += segment.size
        if self.pending_len >= 64 * self.seq_len:
            self._flush(final=False)
        return start

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        stream = np.concatenate(self.pending)
        full = stream.size // self.seq_len
        rest = stream[full * self.seq_len:]
        if full:
            self._write(stream[: full * self.seq_len].reshape(full, self.seq_len))
        self.pending, self.pending_len = ([rest], rest.size) if rest.size else ([], 0)
        if final and rest.size:
            pad = np.full(self.seq_len - rest.size, self.pad_id, dtype=self.dtype)
            self.info.pad_tokens = int(pad.size)
            self._write(np.concatenate([rest, pad]).reshape(1, self.seq_len))
            self.pending, self.pending_len = [], 0

    def _write(self, canvases: np.ndarray) -> None:
        self.info.max_token_id = max(self.info.max_token_id, int(canvases.max()))
        while canvases.shape[0]:
            if self._file is None:
                self._open()
            take = min(canvases.shape[0], self.max_canvases - self._in_file)
            data = np.ascontiguousarray(canvases[:take]).tobytes()
            self._file.write(data)
            self._digest.update(data)
            self._in_file += take
            canvases = canvases[take:]
            if self._in_file == self.max_canvases:
                self._close()

    def _open(self) -> None:
        name = f"{self.split}-{len(self.info.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self._digest = hashlib.sha256()
        self._in_file = 0
        self.info.shards.append(ShardFile(file=name, num_canvases=0, bytes=0, sha256=""))

    def _close(self) -> None:
        self._file.close()
        shard = self.info.shards[-1]
        shard.num_canvases = self._in_file
        shard.bytes = self._in_file * self.seq_len * self.dtype.itemsize
        shard.sha256 = self._digest.hexdigest()
        self.info.num_canvases += self._in_file
        self._file = None

    def finish(self) -> SplitInfo:
        self._flush(final=True)
        if self._file is not None:
            self._close()
        return self.info


def _write_split(directory: Path, split: str, docs: np.ndarray, tokens: list[_SourceTokens], seq_len: int,
                 dtype: np.dtype, tokenizer: SumiTokenizer, progress) -> SplitInfo:
    max_canvases = max(1, _SHARD_BYTES // (seq_len * dtype.itemsize))
    writer = _CanvasWriter(directory, split, seq_len, dtype, tokenizer.pad_token_id, max_canvases)
    maps = [np.memmap(t.path, dtype=dtype, mode="r") if t.offsets[-1] else np.zeros(0, dtype) for t in tokens]
    bos = np.asarray([tokenizer.bos_token_id], dtype=dtype)
    eos = np.asarray([tokenizer.eos_token_id], dtype=dtype)
    index = np.zeros((len(docs), 3), dtype=np.int64)
    for row, (source, doc) in enumerate(docs):
        t = tokens[source]
        body = maps[source][t.offsets[doc]:t.offsets[doc + 1]]
        index[row] = (source, doc, writer.add(np.concatenate([bos, body, eos])))
        progress.update(body.size + 2)
    info = writer.finish()
    info.num_documents = len(docs)
    info.index_file = f"{split}.index.npy"
    np.save(directory / info.index_file, index)
    info.index_sha256 = _sha256(directory / info.index_file)
    return info


# ====================================================================== entry point
def build_shards(spec: MixtureSpec, tokenizer: SumiTokenizer, out_dir: str | Path, *, seq_len: int = 1184,
                 heldout_fraction: float = 0.01, seed: int = 0, num_workers: int | None = None,
                 show_progress: bool = True, overwrite: bool = False) -> Manifest:
    """Tokenise ``spec`` with ``tokenizer`` and write packed shards to ``out_dir``; returns the manifest.

    Args:
        seq_len: canvas length in tokens.
        heldout_fraction: share of the (pre-up-sampling) token stream held out, at least one canvas when > 0.
        seed: seeds the held-out draw, the up-sampling and the document order.
        num_workers: tokeniser threads; None = the tokenizers library's default (all cores), 1 = serial.
        overwrite: replace an existing shard directory at ``out_dir``.
    """
    from tqdm.auto import tqdm

    if not isinstance(seq_len, int) or seq_len < 4:
        raise ConfigError(f"seq_len must be an integer >= 4, got {seq_len!r}")
    if not 0.0 <= heldout_fraction < 0.5:
        raise ConfigError(f"heldout_fraction must be in [0, 0.5), got {heldout_fraction}")
    if num_workers is not None and num_workers < 1:
        raise ConfigError(f"num_workers must be >= 1, got {num_workers}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir} exists and is not empty; choose a new --output or pass --overwrite")
        if not (out_dir / "manifest.json").is_file():
            raise ConfigError(f"{out_dir} is not empty and is not a shard directory (no manifest.json); "
                              "refusing to replace it")
    spec.check()
    dtype = token_dtype(tokenizer.vocab_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    try:
        with _tokenizer_threads(num_workers):
            tokens, sources = [], []
            for s_index, source in enumerate(spec.sources):
                with tqdm(desc=f"tokenise {source.name}", unit="tok", unit_scale=True,
                          disable=not show_progress) as bar:
                    t = _tokenize_source(source, spec, tokenizer, work / f"source-{s_index}.tmp", dtype, bar)
                tokens.append(t)
                sources.append({"name": source.name, "type": source.type, "weight": source.weight,
                                "documents": len(t.lengths), "tokens": int(t.offsets[-1])})
                logger.info("%s: %d documents, %d tokens", source.name, len(t.lengths), t.offsets[-1])
        plan = _plan(tokens, [s.weight for s in spec.sources], heldout_fraction, seq_len, seed)
        for split in SPLITS:
            docs = plan[split]
            for s_index, entry in enumerate(sources):
                mine = docs[docs[:, 0] == s_index]
                entry[f"{split}_documents"] = len(mine)
                entry[f"{split}_tokens"] = int(tokens[s_index].lengths[mine[:, 1]].sum())
        if not len(plan["train"]):
            raise InputError("the train split is empty: every document went to the held-out split or had "
                             "weight 0; add data or lower heldout_fraction")
        splits = {}
        for split in SPLITS:
            total = int(sum(tokens[s].lengths[d] + 2 for s, d in plan[split]))
            with tqdm(total=total, desc=f"pack {split}", unit="tok", unit_scale=True,
                      disable=not show_progress) as bar:
                splits[split] = _write_split(work, split, plan[split], tokens, seq_len, dtype, tokenizer, bar)
        for t in tokens:
            t.path.unlink()
        tokenizer.save_pretrained(work)
        manifest = Manifest(
            seq_len=seq_len, dtype=dtype.name, seed=seed, heldout_fraction=heldout_fraction,
            tokenizer={"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_token_id,
                       "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                       "file": "tokenizer.json", "sha256": _sha256(work / "tokenizer.json")},
            sources=sources, splits=splits, mixture=_jsonable(spec.to_dict()),
        )
        manifest.save(work)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


class _tokenizer_threads:
    """Scope the tokenizers library's parallelism: 1 = serial; N sets its thread pool if not yet started."""

    def __init__(self, num_workers: int | None) -> None:
        self.num_workers = num_workers
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        if self.num_workers is None:
            return self
        self._set("TOKENIZERS_PARALLELISM", "false" if self.num_workers == 1 else "true")
        if self.num_workers > 1:
            self._set("RAYON_NUM_THREADS", str(self.num_workers))
        return self

    def _set(self, key: str, value: str) -> None:
        self.saved[key] = os.environ.get(key)
        os.environ[key] = value

    def __exit__(self, *exc) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
