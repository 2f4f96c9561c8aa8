"""A data mixture: weighted sources of documents, loaded from YAML.

```yaml
name: embedded            # optional
sources:
  - name: plays
    type: builtin         # builtin | text | jsonl | parquet | hf   (inferred from path/corpus/dataset if left out)
    corpus: shakespeare   # builtin only; defaults to the source name
    weight: 1.0           # expected copies of each document in the train split (2 = twice, 0.5 = a random half)
  - name: notes
    path: data/*.txt      # text: one document per file; globs are relative to the YAML file
  - name: web
    path: ["a/*.jsonl", "b/*.jsonl.gz"]
    text_field: text      # jsonl / parquet / hf: the field holding the document text
    max_documents: 10000  # optional cap, first documents in file order
  - name: fineweb
    type: hf
    dataset: HuggingFaceFW/fineweb-edu
    config: sample-10BT
    split: train
    max_documents: 100000
```

Spec mistakes raise :class:`~sumi.errors.ConfigError`; bad data (an empty file, a jsonl line that is not JSON,
a record without the text field) raises :class:`~sumi.errors.InputError`, naming the file and line.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sumi._io import read_text
from sumi.data.corpus import BUILTIN_SOURCES, iter_documents
from sumi.errors import ConfigError, InputError

SOURCE_TYPES = ("builtin", "text", "jsonl", "parquet", "hf")
_TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet",)
# Weights of the embedded default mixture: the stdlib selection is down-sampled to half so prose dominates.
EMBEDDED_WEIGHTS = {"shakespeare": 1.0, "bible": 1.0, "python": 0.5}


@dataclass
class SourceSpec:
    """One source of documents in a :class:`MixtureSpec`."""

    name: str
    """Unique name, used in the manifest's per-source token counts."""
    type: str = ""
    """builtin | text | jsonl | parquet | hf; inferred from ``corpus``/``dataset``/``path`` when empty."""
    weight: float = 1.0
    """Expected number of copies of each document in the train split (document-level up/down-sampling)."""
    path: str | list[str] | None = None
    """Glob(s) of local files (text, jsonl, parquet), relative to the YAML file's folder."""
    text_field: str = "text"
    """Field holding the text in jsonl / parquet / hf records."""
    corpus: str | None = None
    """Embedded corpus of a builtin source (shakespeare, bible, python); defaults to ``name``."""
    dataset: str | None = None
    """Hugging Face dataset name of an hf source (streamed; needs network access)."""
    config: str | None = None
    """Hugging Face dataset configuration (subset) name."""
    split: str = "train"
    """Hugging Face dataset split."""
    max_documents: int | None = None
    """Read at most this many (non-empty) documents of the source."""

    def __post_init__(self) -> None:
        where = f"source {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"every source needs a non-empty string 'name', got {self.name!r}")
        try:
            self.weight = float(self.weight)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: weight must be a number, got {self.weight!r}") from None
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ConfigError(f"{where}: weight must be a finite number >= 0, got {self.weight}")
        if isinstance(self.path, str):
            self.path = [self.path]
        if self.path is not None and (not self.path or not all(isinstance(p, str) and p for p in self.path)):
            raise ConfigError(f"{where}: path must be a glob string or a list of them, got {self.path!r}")
        if not self.type:
            self.type = self._infer_type()
        if self.type not in SOURCE_TYPES:
            raise ConfigError(f"{where}: unknown type {self.type!r}; choose one of {', '.join(SOURCE_TYPES)}")
        if self.type in ("text", "jsonl", "parquet") and not self.path:
            raise ConfigError(f"{where}: a {self.type} source needs 'path' (a glob of files)")
        if self.type == "builtin":
            self.corpus = self.corpus or self.name
            if self.corpus not in BUILTIN_SOURCES:
                raise ConfigError(f"{where}: unknown embedded corpus {self.corpus!r}; choose one of "
                                  f"{', '.join(BUILTIN_SOURCES)} (set 'corpus:' if the name differs)")
        if self.type == "hf" and not self.dataset:
            raise ConfigError(f"{where}: an hf source needs 'dataset' (a Hugging Face dataset name)")
        if self.max_documents is not None and (not isinstance(self.max_documents, int) or self.max_documents < 1):
            raise ConfigError(f"{where}: max_documents must be a positive integer, got {self.max_documents!r}")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError(f"{where}: text_field must be a non-empty string")

    def _infer_type(self) -> str:
        if self.dataset:
            return "hf"
        if self.path:
            first = self.path[0].lower()
            for kind, suffixes in (("jsonl", _JSONL_SUFFIXES), ("parquet", _PARQUET_SUFFIXES),
                                   ("text", _TEXT_SUFFIXES)):
                if first.endswith(suffixes):
                    return kind
            raise ConfigError(f"source {self.name!r}: cannot tell the file type of {self.path[0]!r}; "
                              f"set 'type:' to one of text, jsonl, parquet")
        if self.corpus or self.name in BUILTIN_SOURCES:
            return "builtin"
        raise ConfigError(f"source {self.name!r} has no 'path', 'corpus' or 'dataset'; say where its "
                          "documents come from")

    # ------------------------------------------------------------------ files and documents
    def files(self, base_dir: Path) -> list[Path]:
        """The local files of the source, sorted; a glob that matches nothing is a ConfigError."""
        found: list[Path] = []
        for pattern in self.path or []:
            full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(full), recursive=True)
                             if Path(p).is_file())
            if not matches:
                raise ConfigError(f"source {self.name!r}: {pattern!r} matches no file (looked for {full}); "
                                  "fix the path or the glob (paths are relative to the mixture file)")
            found.extend(m for m in matches if m not in found)
        return found

    def check(self, base_dir: Path) -> None:
        """Fail early on a missing file / package / offline Hugging Face dataset."""
        if self.type in ("text", "jsonl", "parquet"):
            self.files(base_dir)
        elif self.type == "builtin":
            iter_documents(self.corpus)  # locates the package files eagerly
        elif self.type == "hf":
            _check_hf_available(self)

    def iter_documents(self, base_dir: Path) -> Iterator[str]:
        """The source's non-empty documents, in a deterministic order."""
        docs = self._iter_raw(base_dir)
        count = 0
        for doc in docs:
            if not doc:
                continue
            yield doc
            count += 1
            if self.max_documents is not None and count >= self.max_documents:
                return

    def _iter_raw(self, base_dir: Path) -> Iterator[str]:
        if self.type == "builtin":
            yield from iter_documents(self.corpus)
        elif self.type == "hf":
            yield from _iter_hf(self)
        else:
            reader = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet}[self.type]
            for path in self.files(base_dir):
                if path.stat().st_size == 0:
                    raise InputError(f"source {self.name!r}: {path} is empty; remove it or narrow the glob")
                yield from reader(path, self)


def _read_text(path: Path, source: SourceSpec) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"source {source.name!r}: {path} is not UTF-8 text ({exc})") from exc
    if not text.strip():
        raise InputError(f"source {source.name!r}: {path} holds only whitespace; remove it or narrow the glob")
    yield text


def _read_jsonl(path: Path, source: SourceSpec) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    records = 0
    with opener(path, "rb") as f:
        for line_no, line in enumerate(f, 1):  # bytes: json.loads reports non-UTF-8 lines as a ValueError
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InputError(f"source {source.name!r}: {path}:{line_no} is not valid JSON ({exc})") from exc
            records += 1
            yield _text_of(record, source, f"{path}:{line_no}")
    if records == 0:
        raise InputError(f"source {source.name!r}: {path} has no JSON records; remove it or narrow the glob")


def _read_parquet(path: Path, source: SourceSpec) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"source {source.name!r}: reading parquet needs pyarrow; `pip install pyarrow`") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise InputError(f"source {source.name!r}: {path} is not a parquet file ({exc})") from exc
    names = table.schema_arrow.names
    if source.text_field not in names:
        raise InputError(f"source {source.name!r}: {path} has no column {source.text_field!r} (columns: "
                         f"{', '.join(names)}); set text_field")
    if table.metadata.num_rows == 0:
        raise InputError(f"source {source.name!r}: {path} has no rows; remove it or narrow the glob")
    for batch in table.iter_batches(columns=[source.text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _text_of({source.text_field: value}, source, str(path))


def _text_of(record: Any, source: SourceSpec, where: str) -> str:
    if not isinstance(record, dict) or source.text_field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise InputError(f"source {source.name!r}: {where} has no field {source.text_field!r} (found: {keys}); "
                         "set text_field")
    text = record[source.text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise InputError(f"source {source.name!r}: {where}: field {source.text_field!r} is "
                         f"{type(text).__name__}, not text")
    return text


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE",
                                                                                  "HF_DATASETS_OFFLINE"))


def _check_hf_available(source: SourceSpec) -> None:
    if _offline():
        raise ConfigError(f"source {source.name!r} is the Hugging Face dataset {source.dataset!r}, but this "
                          "process is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); download it and use "
                          "a jsonl/parquet source with a path, or unset the offline variables")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError(f"source {source.name!r} needs the `datasets` package; `pip install datasets`") from None


def _iter_hf(source: SourceSpec) -> Iterator[str]:
    _check_hf_available(source)
    import datasets

    try:
        stream = datasets.load_dataset(source.dataset, source.config, split=source.split, streaming=True)
    except Exception as exc:  # network, auth, unknown name: the library's message says which
        raise InputError(f"source {source.name!r}: could not open Hugging Face dataset {source.dataset!r} "
                         f"({exc})") from exc
    for i, record in enumerate(stream):
        yield _text_of(record, source, f"{source.dataset} record {i}")


@dataclass
class MixtureSpec:
    """Weighted sources of documents (see the module docstring for the YAML form)."""

    sources: list[SourceSpec]
    """The sources; names must be unique and at least one weight must be > 0."""
    name: str = "mixture"
    """A label stored in the manifest."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Folder that relative source paths are resolved against (the YAML file's folder)."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("the mixture has no sources; add at least one under 'sources:'")
        self.sources = [s if isinstance(s, SourceSpec) else _source_from_dict(s, i)
                        for i, s in enumerate(self.sources)]
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"source names must be unique; repeated: {', '.join(dupes)}")
        if not any(s.weight > 0 for s in self.sources):
            raise ConfigError("every source has weight 0; give at least one a positive weight")
        self.base_dir = Path(self.base_dir)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path | None = None) -> MixtureSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"a mixture spec is a mapping with 'sources:', got {type(data).__name__}")
        allowed = {"sources", "name", "description"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown mixture key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        sources = data.get("sources")
        if not isinstance(sources, list):
            raise ConfigError("the mixture needs 'sources:', a list of source mappings")
        return cls(sources=[_source_from_dict(s, i) for i, s in enumerate(sources)],
                   name=str(data.get("name", "mixture")),
                   base_dir=Path(base_dir) if base_dir is not None else Path.cwd())

    @classmethod
    def from_yaml(cls, path: str | Path, *, check: bool = True) -> MixtureSpec:
        """Load and validate a YAML mixture; with ``check`` also fail on missing files/packages now."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"mixture file {path} does not exist")
        try:
            data = yaml.safe_load(read_text(path, ConfigError))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        spec = cls.from_dict(data, base_dir=path.resolve().parent)
        if check:
            spec.check()
        return spec

    @classmethod
    def builtin(cls, names: list[str] | tuple[str, ...] = BUILTIN_SOURCES,
                weights: dict[str, float] | None = None) -> MixtureSpec:
        """A mixture of embedded corpora, e.g. ``MixtureSpec.builtin(["shakespeare", "bible"])``."""
        weights = weights or {}
        return cls(sources=[SourceSpec(name=n, type="builtin", weight=weights.get(n, 1.0)) for n in names],
                   name="builtin")

    @classmethod
    def embedded(cls) -> MixtureSpec:
        """The embedded default mixture (same as ``configs/data/embedded.yaml``)."""
        spec = cls.builtin(BUILTIN_SOURCES, EMBEDDED_WEIGHTS)
        spec.name = "embedded"
        return spec

    def check(self) -> None:
        for source in self.sources:
            source.check(self.base_dir)

    def to_dict(self) -> dict:
        out = []
        for s in self.sources:
            d = {f.name: getattr(s, f.name) for f in fields(s)}
            out.append({k: v for k, v in d.items() if v is not None})
        return {"name": self.name, "sources": out}


def _source_from_dict(data: Any, index: int) -> SourceSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"source #{index + 1} must be a mapping (name, weight, path, ...), got {data!r}")
    allowed = {f.name for f in fields(SourceSpec)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"source #{index + 1} ({data.get('name', '?')}): unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    if "name" not in data:
        raise ConfigError(f"source #{index + 1} has no 'name'")
    return SourceSpec(**data)
