"""Small file helpers shared by every writer of sumi's own metadata (no torch import)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the whole new one, never a partial write.

    The text goes to a unique temporary file in the same directory, is flushed to disk, then renamed over
    ``path`` (``os.replace`` is atomic on POSIX); the temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_tree(path: str | Path) -> None:
    """Flush every file under ``path`` and the directories themselves to disk (before a rename publishes them)."""
    path = Path(path)
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_entry(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


@contextmanager
def staged_directory(final: str | Path, keep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Build a directory aside and swap it in whole, so ``final`` holds its old content or the new, never a mix.

    Yields a fresh temporary sibling of ``final`` to write into. When the block succeeds, the entries of the old
    ``final`` whose names ``keep`` accepts and that the block did not write are copied over (files a user put
    next to the weights survive), everything is fsynced, the old directory is renamed aside, the new one renamed
    into place, and only then is the old one deleted. When the block fails (a full disk, Ctrl-C) the temporary
    directory is removed and ``final`` is untouched. A crash between the two renames leaves the old content in
    ``.<name>.old-*`` next to ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory")
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.new-"))
    try:
        yield staging
        if final.is_dir() and keep is not None:
            for entry in final.iterdir():
                if keep(entry.name) and not (staging / entry.name).exists():
                    _copy_entry(entry, staging / entry.name)
        fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old)  # an empty directory is replaced by the rename
    os.replace(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
"""Errors of writing a file that the user fixes (free space, permissions), not bugs."""
_OUTPUT_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "Read-only file system",
                 "File too large")


def output_failure(exc: BaseException) -> str | None:
    """The reason when ``exc`` (or what caused it) is a write failure the user can fix, else None.

    Libraries wrap the OS error differently: safetensors raises its own error with "os error 28" in the text,
    torch's distributed checkpoint a ``CheckpointException`` holding each rank's exception.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in OUTPUT_ERRNOS:
            return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
        text = str(e)
        for marker in _OUTPUT_TEXTS:
            if marker in text:
                return "No space left on device" if marker == "os error 28" else marker
        stack += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            stack += [pair[0] if isinstance(pair, tuple) else pair for pair in failures.values()]
    return None


def read_text(path: str | Path, error: type[Exception] | None = None) -> str:
    """The UTF-8 text of ``path``; bytes that are not UTF-8 raise ``error`` (default InputError) naming the file
    and the offset, instead of a bare UnicodeDecodeError."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        from sumi.errors import InputError

        raise (error or InputError)(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                    f"{exc.start}); save it as UTF-8") from None


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail now, before any work, when ``path`` (a file or directory to be written) cannot be created there.

    Creates missing parent directories (they are needed anyway) and a probe file next to where ``path`` will be;
    raises InputError naming the path and the reason.
    """
    from sumi.errors import InputError

    path = Path(path)
    target_dir = path if path.is_dir() else path.parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=target_dir, prefix=".sumi-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write the {what} {path}: {exc.strerror or exc}; choose a writable path") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"cannot write the {what} {path}: permission denied; choose a writable path")
    return path
