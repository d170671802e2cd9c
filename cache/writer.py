"""``CacheWriter``: adds videos and queries to a cache, committing them atomically.

Atomicity: items go to ``shards/<family>-<prefix>-<seq>.h5.partial``; when the shard reaches
``max_shard_bytes`` or ``max_shard_items`` (per family), on :meth:`CacheWriter.flush` and on
:meth:`CacheWriter.close` (also when the ``with`` block is left by an exception), the file is
closed, its crc32 computed, fsynced and renamed to ``<family>-<prefix>-<seq>-c<crc>.h5``
(then the directory is fsynced). Only renamed shards
are ever read, so a writer killed at any moment leaves exactly the items of its committed
shards; what it had in its partial shard is lost and re-extracted by the next run.

Two writers never collide: each has its own shard prefix ``<host>-<pid>-<random>`` (no
shared file is written), and holds an exclusive ``flock`` on ``locks/<prefix>.lock`` for its
lifetime. When a writer starts, it deletes the partial shards of writers whose lock is free
(their process died: the kernel drops the lock even after SIGKILL), with a warning; partials
of live writers are left alone. Readers never delete anything. (``flock`` must work on the
file system; on Linux NFS it is emulated with POSIX locks.)

A writer belongs to the process that made it (it refuses to run after a fork): make one
writer per process. Several threads may share one writer (calls are serialised).
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CacheError, CacheWarning
from .index import ShardEntry
from r2.fileio import fsync_dir
from .quantize import quantize_int8
from .shards import (FAMILIES, PARTIAL_SUFFIX, SHARDS_DIR, WriterLock, attrs_to_json, encode_id,
                     file_crc32, new_prefix, open_h5, remove_stale_partials, set_text_attr, shard_name,
                     write_item)

DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
DEFAULT_MAX_SHARD_ITEMS = 1000
_WORD = {"videos": "video", "queries": "query"}


@dataclass
class _Partial:
    seq: int
    path: Path  # the .h5.partial path
    file: object
    ids: list = field(default_factory=list)
    nbytes: int = 0


class CacheWriter:
    """Adds items to a :class:`~r2.cache.FeatureCache`; get one with ``cache.writer()``.

    ``max_shard_bytes`` (default 256 MiB) and ``max_shard_items`` (default 1000) bound a
    shard, i.e. how much work a crash can lose. ``on_commit(shard_path, family, ids)`` is
    called after each shard is committed. Committed items are visible at once to the cache
    object that made the writer (``has_video``); other processes see them after ``refresh()``.
    """

    def __init__(self, cache, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 max_shard_items: int = DEFAULT_MAX_SHARD_ITEMS, on_commit=None):
        if max_shard_bytes <= 0 or max_shard_items <= 0:
            raise ValueError("max_shard_bytes and max_shard_items must be positive")
        self.cache = cache
        self.root: Path = cache.path
        self.max_shard_bytes = int(max_shard_bytes)
        self.max_shard_items = int(max_shard_items)
        self.on_commit = on_commit
        self.prefix = new_prefix()
        self.committed = {f: 0 for f in FAMILIES}  # items committed by this writer
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._partials: dict[str, _Partial] = {}
        self._seq = {f: 0 for f in FAMILIES}
        self._pending = {f: set() for f in FAMILIES}
        self._closed = False
        (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.root, self.prefix)
        removed = remove_stale_partials(self.root, own_prefix=self.prefix)
        if removed:
            warnings.warn(f"removed {len(removed)} partial shard(s) left by a writer that did not "
                          f"finish (its items will be extracted again): "
                          + ", ".join(p.name for p in removed), CacheWarning, stacklevel=3)

    # ------------------------------------------------------------------ adding items
    def add_video(self, video_id: str, features, **attrs) -> None:
        """Add a video: ``features (T, K, N, D)`` (K = the manifest's layers, in its order);
        ``attrs`` are kept as JSON (e.g. ``source``, ``size``, ``duration``, ``fps``,
        ``frame_count``, ``sample_times``; numpy arrays become lists).

        Refused (:class:`CacheError`): an id already in the cache or in this writer, a wrong
        shape or width, non-finite values (also values beyond the float16 range when storing
        float16)."""
        x = self._as_float_array(features, 4, "video", video_id, "(T, K, N, D)")
        self._check_width(x.shape[-1], "video_width", "video", video_id)
        arrays, scales = self._encode([x[:, k] for k in range(x.shape[1])], "video", video_id)
        self._add("videos", video_id, arrays, scales, None, attrs)

    def add_query(self, query_id: str, features, mask, **attrs) -> None:
        """Add a query: ``features (K, S, Dt)``, ``mask (S,)`` bool (True = a real token);
        ``attrs`` e.g. ``text=`` (the query text), kept as JSON."""
        x = self._as_float_array(features, 3, "query", query_id, "(K, S, Dt)")
        self._check_width(x.shape[-1], "query_width", "query", query_id)
        m = np.asarray(mask)
        if m.shape != (x.shape[1],):
            raise CacheError(f"query {query_id!r}: mask has shape {m.shape}, expected ({x.shape[1]},)")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise CacheError(f"query {query_id!r}: mask must be boolean (or 0/1)")
        arrays, scales = self._encode([x[k] for k in range(x.shape[0])], "query", query_id)
        self._add("queries", query_id, arrays, scales, m.astype(np.uint8), attrs)

    def _as_float_array(self, features, ndim, word, item_id, shape_txt) -> np.ndarray:
        x = np.asarray(features)
        if x.ndim != ndim:
            raise CacheError(f"{word} {item_id!r}: features must be {shape_txt}, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise CacheError(f"{word} {item_id!r}: features must be floating point, got {x.dtype}")
        k = x.shape[1] if word == "video" else x.shape[0]
        if k != len(self.cache.layers):
            raise CacheError(f"{word} {item_id!r}: {k} layers given, the cache keeps "
                             f"{len(self.cache.layers)} ({self.cache.layers}); features are {shape_txt}")
        if 0 in x.shape:
            raise CacheError(f"{word} {item_id!r}: empty features, shape {x.shape}")
        return x

    def _check_width(self, width, key, word, item_id):
        expected = self.cache.manifest.get(key)
        if expected is not None and width != expected:
            raise CacheError(f"{word} {item_id!r}: width {width}, the manifest says {key} = {expected}")

    def _encode(self, layers, word, item_id):
        """Per layer: the stored array (and the int8 scales)."""
        dtype = self.cache.dtype
        arrays, scales = [], None
        if dtype == "int8":
            scales = []
            for a in layers:
                if not np.isfinite(a).all():
                    raise CacheError(f"{word} {item_id!r} has NaN or infinite values")
                q, s = quantize_int8(a)
                arrays.append(q)
                scales.append(s)
            return arrays, scales
        for a in layers:
            with np.errstate(over="ignore"):  # overflow is reported below
                b = np.ascontiguousarray(a, dtype=np.float16 if dtype == "float16" else np.float32)
            if not np.isfinite(b).all():
                extra = (" (or values beyond the float16 range, +-65504: use dtype float32)"
                         if dtype == "float16" and np.isfinite(a).all() else "")
                raise CacheError(f"{word} {item_id!r} has NaN or infinite values{extra}")
            arrays.append(b)
        return arrays, scales

    def _add(self, family, item_id, arrays, scales, mask, attrs):
        attrs_json = attrs_to_json(attrs)
        self._insert(family, item_id, lambda f: write_item(f, family, item_id, self.cache.layers,
                                                            arrays, scales, mask, attrs_json))

    def _copy(self, family, item_id, src_group) -> None:
        """Copy an item group from another shard as it is stored (used by ``merge``)."""
        def write(f):
            f[family].copy(src_group, encode_id(item_id))
            return sum(ds.nbytes for ds in src_group.values())
        self._insert(family, item_id, write)

    def _insert(self, family, item_id, write):
        if not isinstance(item_id, str) or not item_id:
            raise CacheError(f"{_WORD[family]} ids are non-empty str, got {item_id!r}")
        with self._mutex:
            self._check_usable()
            in_cache = (self.cache.has_video if family == "videos" else self.cache.has_query)(item_id)
            if in_cache or item_id in self._pending[family]:
                raise CacheError(f"{_WORD[family]} {item_id!r} is already in the feature cache at "
                                 f"{self.root}" + ("" if in_cache else " (added earlier by this writer)"))
            part = self._partials.get(family) or self._start(family)
            part.nbytes += write(part.file)
            part.ids.append(item_id)
            self._pending[family].add(item_id)
            if len(part.ids) >= self.max_shard_items or part.nbytes >= self.max_shard_bytes:
                self._commit(family)

    # ------------------------------------------------------------------ shards
    def _check_usable(self):
        if self._closed:
            raise CacheError("this cache writer is closed")
        if os.getpid() != self._pid:
            raise CacheError("a cache writer cannot be used in a forked process: make one writer "
                             "per process (cache.writer())")

    def _start(self, family) -> _Partial:
        seq = self._seq[family]
        self._seq[family] += 1
        name = shard_name(family, self.prefix, seq)
        path = self.root / SHARDS_DIR / (name[: -len(".h5")] + PARTIAL_SUFFIX)
        f = open_h5(path, "w-")
        f.attrs["r2_shard_format"] = 1
        set_text_attr(f, "family", family)
        set_text_attr(f, "writer", self.prefix)
        f.create_group(family)
        part = self._partials[family] = _Partial(seq, path, f)
        return part

    def _commit(self, family) -> None:
        part = self._partials.pop(family)
        part.file.flush()
        part.file.close()
        crc = file_crc32(part.path)
        fd = os.open(part.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        name = shard_name(family, self.prefix, part.seq, crc)
        final = self.root / SHARDS_DIR / name
        os.rename(part.path, final)
        fsync_dir(final.parent)
        st = final.stat()
        self.cache._index.add(name, ShardEntry(family, st.st_size, st.st_mtime_ns, list(part.ids)))
        self._pending[family].difference_update(part.ids)
        self.committed[family] += len(part.ids)
        if self.on_commit is not None:
            self.on_commit(final, family, list(part.ids))

    def flush(self) -> None:
        """Commit the items added so far (the open shards are renamed into place)."""
        with self._mutex:
            self._check_usable()
            for family in list(self._partials):
                self._commit(family)

    def close(self) -> None:
        """Commit what is pending and release the writer's lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            if os.getpid() != self._pid:
                return  # a forked copy: the parent owns the files and the lock
            try:
                for family in list(self._partials):
                    self._commit(family)
            finally:
                self._closed = True
                self._lock.release()
            self.cache._index.write_sidecar(self.root)

    def abort(self) -> None:
        """Drop the uncommitted items (delete the partial shards) and release the lock."""
        with self._mutex:
            if self._closed or os.getpid() != self._pid:
                return
            for part in self._partials.values():
                try:
                    part.file.close()
                except Exception:
                    pass
                part.path.unlink(missing_ok=True)
            self._partials.clear()
            self._closed = True
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        # Leaving on an exception (a failed video, Ctrl-C): keep what was fully added.
        try:
            self.close()
        except Exception:
            self.abort()
