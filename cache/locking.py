"""``flock`` helpers shared by the writer locks (``shards``) and ``merge``.

Two patterns, each in one place:

- :func:`try_flock`: open a file or directory and take an exclusive ``flock`` without waiting.
  A cleaner uses it to tell a dead owner (the lock is free: the kernel drops it when its
  process dies, even by SIGKILL) from a live one (the lock is held).
- :func:`create_locked`: create a file or directory that cleaners may delete as soon as it is
  visible and unlocked, and lock it. There is always a moment between creating a name and
  locking it; a cleaner that comes in that moment takes the lock and deletes the new name. So
  the creator waits for the lock (a cleaner holds it only while it deletes) and then checks
  that the name still refers to what it locked; when it does not, it creates it again. Once
  that check passes, no cleaner can delete it: a cleaner deletes a name only while it holds
  the lock of the file that name refers to (:func:`lock_if_current`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import CacheError

_ATTEMPTS = 20


def try_flock(path, flags: int = os.O_RDWR) -> int | None:
    """Open ``path`` (``os.open`` ``flags``: ``os.O_RDONLY`` for a directory) and take an
    exclusive ``flock`` without waiting. Returns the open descriptor, which holds the lock until
    it is closed, or None when another open file holds the lock. Raises ``OSError``
    (``FileNotFoundError`` when ``path`` is missing) when it cannot be opened."""
    import fcntl  # POSIX only: imported where a lock is taken, so that reading works anywhere

    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_if_current(path, flags: int = os.O_RDWR) -> int | None:
    """:func:`try_flock`, and only while ``path`` still names the file locked: a cleaner that
    opened a name just before another cleaner deleted it (and its creator made it anew) must
    not delete the new one. Returns the descriptor, or None (held, or no longer that file)."""
    fd = try_flock(path, flags)
    if fd is not None and not _names(fd, Path(path)):
        os.close(fd)
        return None
    return fd


def _names(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def create_locked(path, create: Callable[[Path], int]) -> int:
    """``create(path)`` makes ``path`` (failing when it exists) and returns an open descriptor
    of it; this takes an exclusive ``flock`` on it, waiting for a cleaner that locked it first,
    and returns the descriptor once ``path`` is known to still name it (see the module
    docstring). ``create`` is called again when a cleaner deleted ``path`` meanwhile."""
    import fcntl

    path = Path(path)
    for _ in range(_ATTEMPTS):
        try:
            fd = create(path)
        except FileNotFoundError:  # a cleaner removed it between its creation and opening
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holds it only while it deletes the name
            if _names(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # deleted by a cleaner between create() and flock(): make it again
    raise CacheError(f"cannot take the lock {path}: it was deleted {_ATTEMPTS} times while it was "
                     "being taken (is another program removing files in "
                     f"{path.parent}?)")
