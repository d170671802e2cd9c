"""Error and warning types of ``r2.cache``."""

from __future__ import annotations


class CacheError(Exception):
    """A problem with a feature cache that the user can fix (wrong directory, incompatible
    manifest, missing layer or item, damaged shard...).

    ``user_error = True``: the ``r2`` command shows it as a one-line ``Error: ...`` message
    with exit code 1, never as a traceback.
    """

    user_error = True


class ShardDiscardedError(CacheError):
    """A writer dropped its open partial shard: an item that failed half-way (an I/O error, a
    full disk) could not be removed from it, so nothing in it can be trusted. The items added to
    that shard since its last commit are gone too (``dropped``: their ids); the writer is closed.
    Not one item's failure: whoever counted those items as written must count them again."""

    def __init__(self, message: str, dropped=()):
        super().__init__(message)
        self.dropped = list(dropped)


class NoSpaceError(CacheError, OSError):
    """The disk has no room for an item (``errno`` ENOSPC); nothing of it was written. Also an
    ``OSError``, so that a caller that stops on failed writes stops on it too."""


class MissingItemError(CacheError, KeyError):
    """A video or query id that the cache does not hold (also a ``KeyError``)."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class CacheWarning(UserWarning):
    """Something the cache repaired or ignored (a stale partial shard removed, an unreadable
    shard skipped by a reader, an id present in two shards)."""
