"""Crash-safe file writes shared by every room (standard library only, cheap to import).

A file is written under a temporary name in its own directory, flushed and fsynced, then
renamed over the target with ``os.replace``: readers see the old file or the new one, never
half of one, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it survives a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(target: str | os.PathLike) -> Path:
    """A unique hidden name next to ``target`` that keeps its suffix (``.x.png.1f2e.partial.png``)."""
    target = Path(target)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return target.parent / f".{target.name}.{token}.partial{target.suffix}"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``target`` through; on success it is fsynced and renamed
    onto ``target``, on any exception it is removed. For writers that take a file name
    (safetensors, matplotlib)."""
    target = Path(target)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent if str(target.parent) else ".")


def atomic_write(target: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str is encoded as UTF-8, newlines untouched) to ``target`` atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(target)


def link_target(path: str | os.PathLike) -> Path:
    """``path``, or the file it links to when it is a symlink: an output written there (e.g.
    ``r2 predict --out``) replaces that file and keeps the link, where a rename onto ``path``
    itself would replace the link by a file."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def why_not_writable(target: str | os.PathLike, example: str) -> str | None:
    """Why a file cannot be written at ``target`` (its missing folders created first), or
    ``None`` when it can. For checking an output option before long work rather than after:
    ``target`` is a folder (``example`` names a file to suggest inside it), something on the
    way is a file, or the folder (or, when it is still to be made, its nearest existing
    parent) is not writable."""
    target = Path(target)
    if target.is_dir():
        return f"is a folder; name the file, e.g. {target / example}"
    existing = target.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    # written to a temporary file beside the target, then renamed
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write into {existing} (permission denied); choose another file"
    return None
