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

A video can be written in parts, in clip order, without ever holding it whole
(:meth:`CacheWriter.begin_video` gives a :class:`VideoSink`; ``add_video`` is begin + append +
commit). Each part is checked and encoded (finiteness, float16 range, int8 quantisation) as it
arrives, in blocks of at most ``CHUNK_BYTES``; the encoded parts stay in RAM until a video's
exceed ``SPILL_BYTES``, then go to a spill file ``shards/<prefix>-s<seq>.spill.partial``. On
commit the contiguous per-layer datasets are filled block by block, so memory beyond the parts
held in RAM is O(one block), however long the video. A spill file is removed on commit or abort;
one left by a killed writer is removed with its partial shards. Nothing of an uncommitted video
is ever in a shard.

Shapes are pinned: N (``tokens_per_frame``) and D (``video_width``) of the videos, and Dt
(``query_width``) of the queries, are the manifest's when it gives them; otherwise the first
item ever written records them in ``manifest.json`` (atomically, the first writer wins), and
an item of another shape is refused.

Each shard records the command line of the run that wrote it (``command=``, by default the
``command`` of the manifest given to :meth:`FeatureCache.create` by this run), so that
``verify`` can quote what rebuilds that very shard, and the fingerprint of the manifest it
was written under (``manifest_fingerprint``, see :func:`r2.cache.manifest.manifest_fingerprint`,
and the fields it hashes, ``manifest_fields``), so that ``verify`` can tell when
``manifest.json`` no longer describes it, and say which field changed.

A commit that fails (an I/O error or a full disk at flush, close, fsync or rename) drops the
shard, like an item that could not be removed from it: nothing of it stays visible, its ids
are free again, the writer is closed, and :class:`ShardDiscardedError` lists the items that
went with it.

A writer belongs to the process that made it (it refuses to run after a fork): make one
writer per process. Several threads may share one writer (calls are serialised), and two
writers made from one cache object see each other's uncommitted ids.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CacheError, CacheWarning, NoSpaceError, ShardDiscardedError
from .fastio import all_finite
from .index import ShardEntry
from .manifest import fingerprint_fields, fingerprint_text, pin_manifest, text_fingerprint
from r2.fileio import fsync_dir
from .quantize import quantize_int8
from .shards import (FAMILIES, FAMILY_WORD, FINGERPRINT_ATTR, FINGERPRINT_FIELDS_ATTR, PARTIAL_SUFFIX,
                     PINNED_AXES, SHARDS_DIR, GroupNotRemoved, LiveWriters, WriterLock, attrs_to_json,
                     claims_mutex, describe_pinned,
                     encode_id, file_crc32, layer_name, new_prefix, open_h5, remove_stale_partials,
                     set_text_attr, shard_name, spill_name, write_item, write_video_blocks)

SPILL_BYTES = 256 * 2**20  # a video's encoded parts beyond this go to a spill file (read at run time)
CHUNK_BYTES = 16 * 2**20  # parts are encoded, and videos written at commit, in blocks of about this size
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
DEFAULT_MAX_SHARD_ITEMS = 1000
SPACE_MARGIN = 1 << 20  # free bytes left beyond an item and its metadata (the shard's own, its commit)


def _some(ids, n: int = 3) -> str:
    """The first ``n`` of ``ids`` for a message (``'a', 'b', 'c' and 5 more``)."""
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


_COLLECTORS: dict[int, tuple[str, list]] = {}  # active _write_errors_of: id -> (writer prefix, found)
_COLLECTORS_LOCK = threading.Lock()
_PREVIOUS_HOOK = None  # sys.unraisablehook before ours (installed once, never swapped back and forth)


def _unraisable(unraisable) -> None:
    """``sys.unraisablehook`` while any writer collects: an error that names an active writer's
    shards goes to that writer's list, every other one to the hook that was there before."""
    text = " ".join(str(unraisable.exc_value).split())
    with _COLLECTORS_LOCK:
        found = next((f for prefix, f in _COLLECTORS.values() if prefix in text), None)
    if found is None:
        _PREVIOUS_HOOK(unraisable)
        return
    os_error = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    found.append(f"[Errno {os_error[1]}] {os_error[2]}" if os_error else text[:300])


@contextlib.contextmanager
def _write_errors_of(prefix: str):
    """Collect the errors that HDF5 raises about the shards of the writer ``prefix`` while
    h5py releases its objects: h5py cannot raise them there (``Exception ignored in
    ObjectID.__dealloc__``), so a failed write (a full disk) would pass unseen. One module
    hook serves every thread and writer (a registry under a lock); other unraisable errors go
    to the hook that was installed before it."""
    import sys

    global _PREVIOUS_HOOK
    found: list[str] = []
    key = id(found)
    with _COLLECTORS_LOCK:
        if sys.unraisablehook is not _unraisable:
            _PREVIOUS_HOOK = sys.unraisablehook
            sys.unraisablehook = _unraisable
        _COLLECTORS[key] = (prefix, found)
    try:
        yield found
    finally:
        with _COLLECTORS_LOCK:
            del _COLLECTORS[key]
            if not _COLLECTORS and sys.unraisablehook is _unraisable:
                sys.unraisablehook = _PREVIOUS_HOOK  # nobody collects: as it was


@dataclass
class _Partial:
    seq: int
    path: Path  # the .h5.partial path
    file: object
    command: str | None = None
    ids: list = field(default_factory=list)
    nbytes: int = 0


class CacheWriter:
    """Adds items to a :class:`~r2.cache.FeatureCache`; get one with ``cache.writer()``.

    ``max_shard_bytes`` (default 256 MiB) and ``max_shard_items`` (default 1000) bound a
    shard, i.e. how much work a crash can lose. ``on_commit(shard_path, family, ids)`` is
    called after each shard is committed. ``command``: the command line recorded in each
    shard (default: the one this run gave :meth:`FeatureCache.create`). Committed items are
    visible at once to the cache object that made the writer (``has_video``); other
    processes see them after ``refresh()``.
    """

    def __init__(self, cache, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 max_shard_items: int = DEFAULT_MAX_SHARD_ITEMS, on_commit=None,
                 command: str | None = None):
        if max_shard_bytes <= 0 or max_shard_items <= 0:
            raise ValueError("max_shard_bytes and max_shard_items must be positive")
        if command is not None and not isinstance(command, str):
            raise TypeError(f"command must be a str, got {type(command).__name__}")
        self.cache = cache
        self.root: Path = cache.path
        self.max_shard_bytes = int(max_shard_bytes)
        self.max_shard_items = int(max_shard_items)
        self.on_commit = on_commit
        self.command = command if command is not None else cache._run_command
        self.prefix = new_prefix()
        self.committed = {f: 0 for f in FAMILIES}  # items committed by this writer
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._partials: dict[str, _Partial] = {}
        self._seq = {f: 0 for f in FAMILIES}
        self._closed = False
        self._sinks: set = set()  # open VideoSinks (aborted on close/abort)
        self._spill_seq = itertools.count()
        (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.root, self.prefix)
        self._claimed: set[str] = set()
        self._others = LiveWriters(self.root, self.prefix)
        self._shards_stamp = None  # shards/'s mtime when claim_video last refreshed the index
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

        Refused (:class:`CacheError`): an id already in the cache (committed by any writer) or
        in this writer, or claimed by another live writer of the cache (:meth:`claim_video`), a
        wrong shape or width, non-finite values (also values beyond the float16 range when
        storing float16)."""
        x = self._as_float_array(features, 4, "video", video_id, "(T, K, N, D)")
        sink = self.begin_video(video_id)
        sink.spill_allowed = False  # the caller holds all of x anyway: a spill would only add I/O
        try:
            sink.append(x, copy=False)  # x outlives the commit: no need to copy it
            sink.commit(**attrs)
        finally:
            sink.abort()  # no-op once committed

    def begin_video(self, video_id: str) -> "VideoSink":
        """Start writing a video in parts: ``sink.append(part)`` with ``part (c, K, N, D)`` in clip
        order, then ``sink.commit(**attrs)`` (or ``sink.abort()``). The id is claimed at once (a
        duplicate is refused here, and so is a video that another live writer of the cache has
        claimed: :meth:`claim_video`). Several sinks may be open at once; an open sink is aborted
        when the writer closes. See :class:`VideoSink`."""
        self._check_id("videos", video_id)
        with self._mutex:
            self._check_usable()
            self._reserve("videos", video_id)
            try:
                self._claim_for_adding(video_id)
            except BaseException:
                self._release("videos", [video_id])
                raise
            sink = VideoSink(self, video_id)
            self._sinks.add(sink)
        return sink

    def add_query(self, query_id: str, features, mask, **attrs) -> None:
        """Add a query: ``features (K, S, Dt)``, ``mask (S,)`` bool (True = a real token);
        ``attrs`` e.g. ``text=`` (the query text), kept as JSON."""
        x = self._as_float_array(features, 3, "query", query_id, "(K, S, Dt)")
        self._check_shape("queries", query_id, x[0].shape)
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

    def _check_shape(self, family, item_id, shape) -> None:
        """Refuse an item whose pinned axes (see ``PINNED_AXES``) differ from the cache's; the first
        item ever written pins them in the manifest."""
        manifest = self.cache.manifest
        if any(manifest.get(key) is None for key, _ in PINNED_AXES[family]):
            with self._mutex:
                self._pin(family, shape)
        for key, axis in PINNED_AXES[family]:
            expected, got = manifest.get(key), int(shape[axis])
            if got != expected:
                raise CacheError(f"{FAMILY_WORD[family]} {item_id!r}: {describe_pinned(key, got)}, the manifest "
                                 f"says {key} = {expected} (the cache at {self.root} holds the features "
                                 "of one model; write these to another directory)")

    def _pin(self, family, shape) -> None:
        """Record the pinned axes missing from the manifest: those of an item already in the
        cache (written before shapes were pinned), else of ``shape``."""
        cache = self.cache
        ids = cache.video_ids() if family == "videos" else cache.query_ids()
        if ids:
            try:
                if family == "videos":
                    t, _, n, d = cache.video_shape(ids[0])
                    shape = (t, n, d)
                else:
                    _, s, d = cache.query_shape(ids[0])
                    shape = (s, d)
            except CacheError:
                pass  # an unreadable shard (verify reports it): pin from this item
        values = {key: int(shape[axis]) for key, axis in PINNED_AXES[family]}
        on_disk = pin_manifest(self.root, values)
        for key in values:
            self.cache.manifest[key] = on_disk[key]

    @property
    def _stored_dtype(self) -> type:
        """The numpy dtype of the stored layers (int8 also stores float32 scales)."""
        return {"int8": np.int8, "float16": np.float16}.get(self.cache.dtype, np.float32)

    def _encode_block(self, x, item_id, word="video"):
        """A block of video clips ``(c, K, N, D)`` (or one query layer ``(S, Dt)``) -> the stored
        array of the same shape and the int8 scales ``(c, K, N)`` (None unless int8), with the
        checks of :meth:`add_video`."""
        dtype = self.cache.dtype
        if dtype == "int8":
            if not all_finite(x):
                raise CacheError(f"{word} {item_id!r} has NaN or infinite values")
            return quantize_int8(x)
        with np.errstate(over="ignore"):  # overflow is reported below
            b = np.ascontiguousarray(x, dtype=self._stored_dtype)
        if not all_finite(b):
            extra = (" (or values beyond the float16 range, +-65504: use dtype float32)"
                     if dtype == "float16" and all_finite(x) else "")
            raise CacheError(f"{word} {item_id!r} has NaN or infinite values{extra}")
        return b, None

    def _encode(self, layers, word, item_id):
        """Per layer: the stored array (and the int8 scales, else None)."""
        encoded = [self._encode_block(a, item_id, word) for a in layers]
        arrays = [b for b, _ in encoded]
        return arrays, ([q for _, q in encoded] if self.cache.dtype == "int8" else None)

    def _add(self, family, item_id, arrays, scales, mask, attrs):
        attrs_json = attrs_to_json(attrs)
        nbytes = sum(a.nbytes for a in arrays) + sum(q.nbytes for q in scales or ()) + (
            0 if mask is None else np.asarray(mask).nbytes)
        self._insert(family, item_id, lambda f: write_item(f, family, item_id, self.cache.layers,
                                                            arrays, scales, mask, attrs_json),
                     nbytes=nbytes)

    def _copy(self, family, item_id, src_group, command=None) -> None:
        """Copy an item group from another shard as it is stored (used by ``merge``), into a
        shard that records ``command`` (the source shard's)."""
        first = layer_name(self.cache.layers[0])
        if first not in src_group:
            raise CacheError(f"{FAMILY_WORD[family]} {item_id!r} in {src_group.file.filename} has no dataset "
                             f"{first}; run `r2 cache verify` on its cache")
        self._check_shape(family, item_id, src_group[first].shape)

        nbytes = sum(ds.nbytes for ds in src_group.values())

        def write(f):
            f[family].copy(src_group, encode_id(item_id))
            return nbytes
        self._insert(family, item_id, write, command, nbytes=nbytes)

    @staticmethod
    def _check_id(family, item_id) -> None:
        """Refuse an id that cannot be stored, here rather than when its shard is committed:
        not a non-empty str, or one that has no UTF-8 form (a lone surrogate that is not an
        undecodable byte of a file name, e.g. ``'\\ud800'``)."""
        if not isinstance(item_id, str) or not item_id:
            raise CacheError(f"{FAMILY_WORD[family]} ids are non-empty str, got {item_id!r}")
        try:
            encode_id(item_id)
        except UnicodeEncodeError as exc:
            raise CacheError(f"{FAMILY_WORD[family]} id {item_id!r} cannot be stored: it is not valid text "
                             f"({exc.reason} at position {exc.start}); give the id as proper Unicode") from None

    def _insert(self, family, item_id, write, command=None, reserved=False, nbytes=0):
        self._check_id(family, item_id)
        command = self.command if command is None else command
        with self._mutex:
            self._check_usable()
            if not reserved:
                self._reserve(family, item_id)  # a duplicate is said as such, also on a full disk
            try:
                self._check_space(family, item_id, nbytes)
                part = self._partials.get(family)
                if part is not None and part.command != command:
                    self._commit(family)  # one command per shard
                    part = None
                with _write_errors_of(self.prefix) as failed:
                    part = part or self._start(family, command)
                    part.nbytes += write(part.file)
                if failed:  # e.g. a full disk, which HDF5 reports only as an ignored error
                    raise GroupNotRemoved(str(part.path), OSError(f"writing it failed: {failed[0]}"))
            except GroupNotRemoved as exc:  # the half-written group is still in the shard
                self._release(family, [item_id])
                self._discard(family, item_id, exc.cause)
            except BaseException:
                self._release(family, [item_id])
                raise
            part.ids.append(item_id)
            if len(part.ids) >= self.max_shard_items or part.nbytes >= self.max_shard_bytes:
                self._commit(family)

    def _check_space(self, family, item_id, nbytes: int) -> None:
        """Refuse an item of ``nbytes`` when the shards' file system has not room for it, its
        HDF5 metadata and a margin, before anything of it is written: an item refused whole is
        one clear error, where a write that fails half-way costs the open shard when its group
        cannot be removed (HDF5 reports some failed writes only as ignored errors). (The writes
        are still checked: another process may fill the disk in between; a shard is created
        without HDF5's sieve buffer, so such a failure is an error, not a crash at exit,
        ``shards.create_h5``.)"""
        try:
            st = os.statvfs(self.root / SHARDS_DIR)
        except OSError:
            return
        if st.f_blocks == 0:  # a file system that reports no sizes (some FUSE mounts): nothing to go by
            return
        free = st.f_bavail * st.f_frsize
        need = nbytes + nbytes // 32 + SPACE_MARGIN
        if free < need:
            raise NoSpaceError(
                errno.ENOSPC, f"no room for {FAMILY_WORD[family]} {item_id!r} in {self.root / SHARDS_DIR}: it needs about "
                f"{need / 2**20:.1f} MB with HDF5's metadata, the disk has {free / 2**20:.1f} MB free. "
                "Free disk space (or write to another disk) and rerun: what was committed is kept, the "
                "rest is added then")

    def _discard(self, family, item_id, exc) -> None:
        """The failed item's group could not be removed from the open partial shard: drop the
        shard (it never becomes visible), with the items added to it since its last commit, and
        close this writer; raises :class:`ShardDiscardedError` (``exc``, the item's failure, when
        that is a ``KeyboardInterrupt`` or the like)."""
        part = self._partials.pop(family)
        dropped = self._drop(family, part)
        if not isinstance(exc, Exception):
            raise exc  # Ctrl-C and the like go on as they are
        raise ShardDiscardedError(
            f"{FAMILY_WORD[family]} {item_id!r} failed half-way ({type(exc).__name__}: {exc}) and could not be "
            f"removed from {part.path.name}; that shard was dropped with the {len(part.ids)} item(s) added to "
            "it since its last commit, and this writer is closed. Free disk space and rerun: what was "
            "committed is kept, the rest is added again", dropped) from exc

    def _drop_uncommitted(self, family, part: _Partial, final: Path | None, exc: BaseException) -> None:
        """Committing ``part`` failed with ``exc``: remove it (also under its final name when
        the rename got that far: the commit is not known to be durable, and the error says the
        items are gone), free its ids, close this writer and raise :class:`ShardDiscardedError`
        (``exc`` itself when it is a ``KeyboardInterrupt`` or the like)."""
        dropped = self._drop(family, part, final)
        if not isinstance(exc, Exception):
            raise exc  # Ctrl-C and the like go on as they are
        raise ShardDiscardedError(
            f"could not commit the shard {part.path.name} ({type(exc).__name__}: {exc}); it was dropped "
            f"with the {len(part.ids)} {FAMILY_WORD[family] if len(part.ids) == 1 else family} added to it since "
            f"its last commit ({_some(part.ids)}), and this writer is closed. Check the disk (space, I/O "
            "errors) and rerun: what was committed is kept, the rest is added again", dropped) from exc

    def _drop(self, family, part: _Partial, final: Path | None = None) -> list:
        """Drop ``part`` (an uncommitted shard): close and delete it (also under its ``final``
        name when a commit got that far), free its ids, and close this writer: the other
        family's shard is committed when it can be, else dropped too. Returns the ids dropped,
        that shard's included (all of them go into the one ShardDiscardedError)."""
        with contextlib.suppress(Exception), _write_errors_of(self.prefix):  # (the caller reports)
            part.file.close()
        for path in (part.path, final):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
        self._release(family, part.ids)
        dropped = list(part.ids)
        try:
            self.close()
        except ShardDiscardedError as other:  # its commit failed as well (the writer is closed by then)
            return dropped + [i for i in other.dropped if i not in dropped]
        except Exception:
            self.abort()  # it could not be committed either: dropped too, never visible
        return dropped

    def _reserve(self, family, item_id) -> None:
        """Claim an id for this writer; refused when the cache has it, or a writer of this
        cache object has it pending (shared through ``cache._pending``)."""
        cache = self.cache
        with cache._pending_lock:
            in_cache = (cache.has_video if family == "videos" else cache.has_query)(item_id)
            owner = cache._pending[family].get(item_id)
            if in_cache or owner is not None:
                where = ("" if in_cache else " (added earlier by this writer)" if owner is self
                         else " (added by another writer of this cache, not committed yet)")
                raise CacheError(f"{FAMILY_WORD[family]} {item_id!r} is already in the feature cache at "
                                 f"{self.root}{where}")
            cache._pending[family][item_id] = self

    def _release(self, family, ids) -> None:
        pending = self.cache._pending[family]
        with self.cache._pending_lock:
            for item_id in ids:
                if pending.get(item_id) is self:
                    del pending[item_id]

    # ------------------------------------------------------------------ shards
    def claim_video(self, video_id: str) -> bool:
        """Take ``video_id`` for this writer before working on it: False when another live
        writer of the cache has taken it, or the cache holds it now (committed by anyone since
        the cache was opened); else it is recorded as this writer's (in its lock file, so the
        claim lasts exactly as long as this writer) and True (also for a video claimed
        before). So several processes extracting the same inputs into one cache share the
        work instead of each doing all of it. ``add_video``/``begin_video`` claim the video
        themselves and refuse one that another live writer has claimed. Where claims cannot
        be read or written (an OSError: a full disk, say) the video is this writer's, as
        without claims."""
        with self._mutex:
            self._check_usable()
            return self._claim(video_id) is None

    def video_committed(self, video_id: str) -> bool:
        """Whether the cache holds ``video_id`` now, the index refreshed (another writer may have
        committed it since). Asked after :meth:`claim_video` said no: True, it is done; False,
        its claimer is still at it, or has just stopped without it (ask :meth:`claim_video`
        again). A claim lasts as long as its writer, so it does not say which."""
        with self._mutex:
            self._check_usable()
            self.cache.refresh()
            return self.cache.has_video(video_id)

    def _claim_for_adding(self, video_id: str) -> None:
        """Claim a video that is being added (:meth:`begin_video`); a CacheError when another
        live writer has claimed it, or committed it since this writer's cache was read."""
        taken = self._claim(video_id)
        if taken == "cache":
            raise CacheError(f"video {video_id!r} is already in the feature cache at {self.root} (committed by "
                             "another writer since this one opened the cache)")
        if taken is not None:
            raise CacheError(f"video {video_id!r} is being added to the feature cache at {self.root} by another "
                             f"writer ({taken.label}, which claimed it): adding it here too would store it "
                             "twice; it is free again once that writer stops")

    def _claim(self, video_id: str):
        """None when ``video_id`` is this writer's (claimed before, claimed now, or claims cannot
        be read or written: an OSError, as without claims); else who has it, as
        :meth:`_taken_or_claim` says."""
        if video_id in self._claimed:
            return None
        try:
            taken = self._taken_or_claim(video_id)
        except OSError:
            taken = None
        if taken is None:
            self._claimed.add(video_id)
        return taken

    def _taken_or_claim(self, video_id: str):
        """Who has ``video_id``: the other live writer that claimed it (a ``LiveWriter``),
        ``"cache"`` when the cache holds it (the index refreshed when others may have committed
        it), else None, and it is claimed for this writer now."""
        with claims_mutex(self.root):
            others = self._others.read()
            for w in others:
                if video_id in w.claimed:
                    return w
            stamp = os.stat(self.root / SHARDS_DIR).st_mtime_ns  # a commit renames a shard in
            if others or stamp != self._shards_stamp:  # another writer may have committed it
                self.cache.refresh()
                self._shards_stamp = stamp
            if self.cache.has_video(video_id):
                return "cache"
            self._lock.append_claim(video_id)
            return None

    def other_live_writers(self) -> list:
        """The other writers of this cache that are alive now (:class:`~r2.cache.shards.LiveWriter`:
        prefix, host, pid, claimed): another ``r2 extract`` into the same folder, say."""
        return self._others.read()

    def _check_usable(self):
        if self._closed:
            raise CacheError("this cache writer is closed")
        if os.getpid() != self._pid:
            raise CacheError("a cache writer cannot be used in a forked process: make one writer "
                             "per process (cache.writer())")

    def _start(self, family, command=None) -> _Partial:
        seq = self._seq[family]
        self._seq[family] += 1
        name = shard_name(family, self.prefix, seq)
        path = self.root / SHARDS_DIR / (name[: -len(".h5")] + PARTIAL_SUFFIX)
        f = open_h5(path, "w-")
        f.attrs["r2_shard_format"] = 1
        set_text_attr(f, "family", family)
        set_text_attr(f, "writer", self.prefix)
        if command:
            set_text_attr(f, "command", command)  # verify quotes it to rebuild this shard
        # what the features mean (model, layers, fps, ...): verify reports a shard whose
        # manifest was edited afterwards, or one copied in from a cache with other settings
        fields = fingerprint_text(fingerprint_fields(self.cache.manifest))
        set_text_attr(f, FINGERPRINT_ATTR, text_fingerprint(fields))
        set_text_attr(f, FINGERPRINT_FIELDS_ATTR, fields)
        f.create_group(family)
        part = self._partials[family] = _Partial(seq, path, f, command or None)
        return part

    def _commit(self, family) -> None:
        """Close the family's partial shard, fsync it and rename it into place. When any of
        that fails (an I/O error, a full disk), the shard is dropped as in :meth:`_discard`:
        nothing of it stays visible, its ids are free again, this writer is closed, and
        :class:`ShardDiscardedError` names the items that went with it."""
        part = self._partials.pop(family)
        final = None
        try:
            with _write_errors_of(self.prefix) as failed:
                part.file.flush()
                part.file.close()
            if failed:  # HDF5 reported them only while closing, as ignored errors
                raise OSError(f"writing it failed: {failed[0]}")
            self._read_back(family, part)
            crc = file_crc32(part.path)
            fd = os.open(part.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            name = shard_name(family, self.prefix, part.seq, crc)
            path = self.root / SHARDS_DIR / name
            os.rename(part.path, path)
            final = path
            fsync_dir(final.parent)
            st = final.stat()
        except BaseException as exc:
            self._drop_uncommitted(family, part, final, exc)
        self.cache._index.add(name, ShardEntry(family, st.st_size, st.st_mtime_ns, list(part.ids), part.command))
        self._release(family, part.ids)
        self.committed[family] += len(part.ids)
        if self.on_commit is not None:
            self.on_commit(final, family, list(part.ids))

    def _read_back(self, family, part: _Partial) -> None:
        """Read the closed partial shard back (from the page cache) and raise OSError unless it
        holds every item added, each dataset equal to its crc32: a shard damaged by a write
        that failed without an error (HDF5 reports some, a full disk among them, only while
        closing) must not be committed under a crc32 of the damaged bytes."""
        from .verify import _check_shard

        manifest = self.cache.manifest
        check = _check_shard(part.path, family, manifest["layers"], manifest.get("dtype", "float16"),
                             quick=False, crc_only=True)
        missing = set(part.ids) - set(check.ids)
        if check.messages or missing:
            what = check.messages[0] if check.messages else f"{len(missing)} of its items are missing"
            raise OSError(f"the shard read back is not what was written: {what}")

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
                self._abort_sinks()  # a video not committed is not kept
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
            self._abort_sinks()
            for family, part in self._partials.items():
                try:
                    part.file.close()
                except Exception:
                    pass
                part.path.unlink(missing_ok=True)
                self._release(family, part.ids)
            self._partials.clear()
            self._closed = True
            self._lock.release()

    def _abort_sinks(self):
        for sink in list(self._sinks):
            sink.abort()

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


class _Spill:
    """A raw file of rows ``row_shape`` of ``dtype``, appended to and read back in ranges."""

    def __init__(self, path: Path, row_shape, dtype):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.rows = 0
        self.fh = open(path, "xb+")

    def write(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self.fh.write(a.view(np.uint8).reshape(-1).data)
        self.rows += len(a)

    def read(self, t0: int, t1: int) -> np.ndarray:
        out = np.empty((t1 - t0,) + self.row_shape, self.dtype)
        view = memoryview(out.view(np.uint8).reshape(-1))
        self.fh.flush()
        pos, done = t0 * self.row_bytes, 0
        while done < len(view):
            n = os.preadv(self.fh.fileno(), [view[done:]], pos + done)
            if n <= 0:
                raise CacheError(f"spill file {self.path} is shorter than written")
            done += n
        return out

    def remove(self) -> None:
        try:
            self.fh.close()
        except Exception:
            pass
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # left for the next writer's clean-up of this prefix
            pass


class VideoSink:
    """One video being written in parts (from :meth:`CacheWriter.begin_video`).

    ``append(part)``: ``part (c, K, N, D)``, the next ``c`` clips; it is checked (layers, pinned
    N and D, finiteness, float16 range) and encoded to the cache's dtype at once, block by block
    (``CHUNK_BYTES``), and kept: in RAM while this video's encoded parts stay within
    ``SPILL_BYTES``, else in a spill file next to the partial shards. A part the cache refuses
    raises :class:`CacheError` and aborts the sink. ``commit(**attrs)`` writes the video into the
    writer's partial shard, block by block (same layout and checks as ``add_video``) and returns
    the number of clips; any failure aborts the sink and leaves nothing in the shard.
    ``abort()`` drops what was appended and frees the id (idempotent, also after a commit,
    where it does nothing). ``clips``: clips appended so far; ``spilled``: whether a spill file
    is in use. Also a context manager: leaving the block without a commit aborts.

    A sink belongs to one thread at a time: its own state is not locked (the writer's is, so
    several threads may each fill their own sinks of one writer); close or abort the writer
    only once no thread is still appending to one of its sinks.
    """

    def __init__(self, writer: CacheWriter, video_id: str):
        self.writer, self.video_id = writer, video_id
        self.clips = 0
        self.state = "open"  # open | committed | aborted
        self._shape = None  # (K, N, D)
        self._parts: list = []  # (data, scales) in RAM
        self._ram = 0
        self._spill: list | None = None  # [_Spill data, _Spill scales (int8)]
        self.spill_allowed = True  # False: everything stays in RAM (add_video's whole arrays)

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    @property
    def spill_paths(self) -> list[Path]:
        return [s.path for s in self._spill or ()]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.abort()

    def _check_open(self):
        if self.state != "open":
            raise CacheError(f"video {self.video_id!r}: this sink is {self.state}")
        self.writer._check_usable()

    def append(self, part, copy: bool = True) -> None:
        """Add the next clips, ``part (c, K, N, D)`` float. ``copy=True``: what is kept never
        shares memory with ``part`` (the caller may reuse it); False: the caller hands it over."""
        self._check_open()
        try:
            w = self.writer
            x = w._as_float_array(part, 4, "video", self.video_id, "(c, K, N, D)")
            w._check_shape("videos", self.video_id, x[:, 0].shape)  # the manifest's N and D
            if self._shape is None:
                self._shape = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != self._shape:
                raise CacheError(f"video {self.video_id!r}: a part of shape {x.shape} after parts of "
                                 f"(c, {', '.join(map(str, self._shape))})")
            # clips per block: a block's encoding temporaries stay within about CHUNK_BYTES (int8
            # quantisation makes ~3 float32 copies of its block, a dtype conversion at most one)
            per_value = 4 * (4 if w.cache.dtype == "int8" else 1) if x.dtype.itemsize <= 4 else 8
            rows = max(1, CHUNK_BYTES // max(1, x[0].size * per_value))
            for t0 in range(0, len(x), rows):
                block = x[t0:t0 + rows]
                data, scales = w._encode_block(block, self.video_id)
                if copy and np.may_share_memory(data, block):
                    data = data.copy()
                self._keep(data, scales)
        except BaseException:
            self.abort()
            raise

    def _keep(self, data, scales) -> None:
        nbytes = data.nbytes + (0 if scales is None else scales.nbytes)
        if self._spill is None and self.spill_allowed and self._ram + nbytes > SPILL_BYTES:
            self._start_spill(scales is not None)
        if self._spill is None:
            self._parts.append((data, scales))
            self._ram += nbytes
        else:
            self._spill[0].write(data)
            if scales is not None:
                self._spill[1].write(scales)
        self.clips += len(data)

    def _start_spill(self, int8: bool) -> None:
        w = self.writer
        shards = w.root / SHARDS_DIR
        k, n, d = self._shape
        stored = w._stored_dtype
        spill = []
        try:
            with w._mutex:
                spill.append(_Spill(shards / spill_name(w.prefix, next(w._spill_seq)), (k, n, d), stored))
                if int8:
                    spill.append(_Spill(shards / spill_name(w.prefix, next(w._spill_seq)), (k, n), np.float32))
            for data, scales in self._parts:
                spill[0].write(data)
                if int8:
                    spill[1].write(scales)
        except BaseException:
            for s in spill:
                s.remove()
            raise
        self._spill = spill
        self._parts, self._ram = [], 0

    def _blocks(self):
        """The encoded clips in order, in blocks of about ``CHUNK_BYTES``."""
        if self._spill is None:
            yield from self._parts
            return
        data, scales = self._spill[0], self._spill[1] if len(self._spill) > 1 else None
        rows = max(1, CHUNK_BYTES // (data.row_bytes + (scales.row_bytes if scales else 0)))
        for t0 in range(0, data.rows, rows):
            t1 = min(t0 + rows, data.rows)
            yield data.read(t0, t1), (scales.read(t0, t1) if scales else None)

    def commit(self, **attrs) -> int:
        """Write the video into the shard (attributes as for ``add_video``); returns its clips."""
        self._check_open()
        w = self.writer
        try:
            attrs_json = attrs_to_json(attrs)
            if not self.clips:
                raise CacheError(f"video {self.video_id!r}: empty features, no clips were appended")
            k, n, d = self._shape
            nbytes = self.clips * k * n * d * np.dtype(w._stored_dtype).itemsize + (
                self.clips * k * n * 4 if w.cache.dtype == "int8" else 0)  # (T, K, N, D), the int8 scales
            w._insert("videos", self.video_id,
                      lambda f: write_video_blocks(f, "videos", self.video_id, w.cache.layers, (self.clips, n, d),
                                                   w._stored_dtype, w.cache.dtype == "int8", self._blocks(),
                                                   attrs_json),
                      reserved=True, nbytes=nbytes)
        except BaseException:
            self.abort()
            raise
        self.state = "committed"  # the id stays claimed until its shard is committed
        self._free()
        return self.clips

    def abort(self) -> None:
        """Drop the appended clips and release the id (nothing when committed or aborted)."""
        if self.state != "open":
            return
        self.state = "aborted"
        try:
            self._free()
        finally:
            self.writer._release("videos", [self.video_id])

    def _free(self) -> None:
        for s in self._spill or ():
            s.remove()
        self._spill = None
        self._parts, self._ram = [], 0
        with self.writer._mutex:
            self.writer._sinks.discard(self)
