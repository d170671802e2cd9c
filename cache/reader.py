"""``FeatureCache``: create, open and read a feature cache.

Reading is lazy and per process: a shard is opened on its first read and kept in a small
LRU of open shards (``max_open_files``); when the process id changes (a forked DataLoader
worker) the inherited handles are closed in the child and never used, so a cache opened in
the parent can be shared by forked workers; a cache also pickles (without its open files)
for ``spawn`` workers. Threads may share a cache (reads are serialised per cache object).

Each layer of an item is one contiguous, uncompressed dataset. The first read of an item
asks HDF5 for its datasets' byte offsets (kept per process); every read then is one
``os.preadv`` per layer straight into the output array (``r2.cache.fastio``), so
``load_video(id, layers, dtype=None)`` runs at the speed of a raw read of the same bytes
(``bench/cache_read.py``). The float32 default also converts every value: a float16 layer is
read in blocks of rows (512 KiB) into a small scratch buffer and converted
(``fastio.f16_to_f32``) while the block is in the CPU cache; it runs at 1-3 GB/s of float16
per core, much below a warm raw read, and a new float32 array per video adds page faults
(``out=`` a reused array spares them). ``dtype=None`` returns the stored float type.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from .errors import CacheError, MissingItemError
from .index import ShardIndex
from .manifest import (MANIFEST_NAME, describe_differences, differences, load_manifest, new_manifest,
                       read_manifest, write_manifest_exclusive)
from .fastio import HAVE_PREADV, f16_to_f32, pread_into
from .shards import (FAMILIES, FAMILY_WORD, SHARDS_DIR, LiveWriters, attrs_from_group, encode_id, layer_name,
                     list_partials, open_h5, scale_name)
from .verify import manifest_edited

_RAW = {"<f2", "<f4", "|i1", "|u1"}  # stored bytes == in-memory bytes on little-endian hosts
_BLOCK_BYTES = 512 * 1024  # float16 bytes read and converted to float32 per step (stays in L2)


def _float_dtype(dtype: np.dtype, what: str) -> np.dtype:
    """Features are read as floats only (an integer dtype would silently truncate them)."""
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{what} must be " + ("a float array" if what == "out" else
                         "a float type (float16, float32, float64), or None for the stored type")
                         + f"; got {dtype}")
    return dtype


@dataclass(frozen=True)
class CacheInfo:
    """What :meth:`FeatureCache.info` reports: the manifest's description of the features, the
    committed items and shards, and what needs attention. ``to_dict()``: the JSON of
    ``r2 cache info --json``."""

    path: str
    format_version: int | None
    r2_version: str | None
    created: str | None
    model_id: str | None
    model_weights_hash: str | None
    model_config_hash: str | None
    layers: list[int]
    dtype: str
    fps: float | None  # None: a rate per video
    precision: str
    token_form: str | None
    sampling: str | None
    tokens_per_frame: int | None
    video_width: int | None
    query_width: int | None
    videos: int
    queries: int
    shards: int
    video_shards: int
    query_shards: int
    bytes: int  # of the committed shards
    unreadable_shards: list[str]  # names: run r2 cache verify
    partial_shards: list[str]  # names: a writer is running or was stopped (ignored)
    duplicate_ids: int  # ids in two shards (reads use one)
    command: str | None  # the r2 extract command line that made the cache
    writers: list[dict] = dataclasses.field(default_factory=list)  # alive now: prefix, host, pid, videos claimed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SentenceMismatch:
    """A query id whose cached ``text`` is another sentence than the one given for it."""

    query_id: str
    cached: str
    given: str


class QueryFeatures(NamedTuple):
    """What :meth:`FeatureCache.load_query` returns (``q, mask = cache.load_query(qid)`` unpacks it)."""

    features: np.ndarray  # (K, S, Dt)
    mask: np.ndarray  # (S,) bool: the tokens SOT ... EOT of the sentence


class _Shard:
    """One shard's open HDF5 file (metadata) and raw descriptor (data), per process."""

    __slots__ = ("path", "root", "h5", "fd")

    def __init__(self, path: Path, root: Path):
        self.path, self.root, self.h5, self.fd = path, root, None, None

    def file(self):
        if self.h5 is None:
            try:
                self.h5 = open_h5(self.path)
            except (OSError, ValueError) as exc:
                raise CacheError(f"cannot read shard {self.path}: {exc}; run "
                                 f"`r2 cache verify {self.root}`") from None
        return self.h5

    def descriptor(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self.fd

    def close(self):
        if self.h5 is not None:
            try:
                self.h5.close()
            except Exception:
                pass
            self.h5 = None
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class FeatureCache:
    """A feature cache directory (see ``r2.cache`` for the layout and the contract).

    Use :meth:`create` (extraction, every run) or :meth:`open` (everything else); the
    constructor is internal.

    Video features are ``(T, K, N, D)``, query features ``(K, S, Dt)`` with a ``(S,)`` bool
    mask (the shape letters of :mod:`r2`: clips, layers, tokens, width; query tokens). ``layers=``
    arguments take layer ids as in ``manifest["layers"]`` (e.g. ``[11, 12]``), in the order
    given; None means all of them.
    """

    def __init__(self, path, manifest: dict, *, max_open_files: int = 64):
        self.path = Path(os.path.abspath(path))
        self.manifest = manifest
        self.layers: list[int] = [int(x) for x in manifest["layers"]]
        self.dtype: str = manifest.get("dtype", "float16")
        self.max_open_files = max_open_files
        self._index = ShardIndex()
        self._run_command = None  # the command this run gave create(); writers record it in shards
        self._lock = threading.RLock()
        self._reset_process_state()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path, manifest: dict) -> "FeatureCache":
        """Create a cache at ``path`` with ``manifest`` (keys: see ``r2.cache.manifest``), or
        open the one already there when its manifest is compatible: extraction calls this on
        every run, resumed runs included. Compatible means equal in every field of
        :data:`r2.cache.manifest.COMPAT_FIELDS` (compared by
        :func:`r2.cache.manifest.differences`): ``format_version``, ``model_id`` (or
        ``model_weights_hash`` instead, when both manifests have it), ``model_config_hash``, ``layers``, ``query_layers`` (absent = ``layers``), ``fps``,
        ``dtype``, ``preprocessing``, ``precision`` (absent = ``"fp32"``), ``token_form``,
        ``sampling``, and the pinned shapes ``tokens_per_frame``, ``video_width`` and
        ``query_width`` where both manifests have them. An incompatible existing cache raises
        :class:`CacheError` naming each differing field with both values; a non-empty
        directory that is not a cache is refused. Safe against several processes creating the
        same cache at once.
        """
        root = Path(path)
        requested = new_manifest(manifest)
        if root.exists() and not root.is_dir():
            raise CacheError(f"cannot create a feature cache at {root}: it is a file")
        if not (root / MANIFEST_NAME).exists():
            ours = {MANIFEST_NAME, SHARDS_DIR}  # may appear meanwhile: another process creating it
            shards = root / SHARDS_DIR
            if shards.is_dir() and any(p.suffix == ".h5" for p in shards.iterdir()):  # shards come after a manifest
                load_manifest(root)  # raises: the manifest was lost, restore it (not pin this run's settings)
            if root.is_dir() and any(not p.name.startswith(".") and p.name not in ours
                                     for p in root.iterdir()):
                raise CacheError(f"cannot create a feature cache in {root}: the directory is not "
                                 f"empty and is not a cache (no {MANIFEST_NAME}); choose a new "
                                 "or empty directory")
            write_manifest_exclusive(root, requested)  # False: another process won the race
        existing = read_manifest(root)
        diffs = differences(existing, requested)
        if diffs:
            shards = root / SHARDS_DIR
            empty = not shards.is_dir() or not any(p.suffix == ".h5" for p in shards.iterdir())
            raise CacheError(
                f"the feature cache at {root} was built with different settings:\n"
                + describe_differences(diffs)
                + ("\nIt holds no video or query yet (a run with those settings stopped before writing any): "
                   "delete it to start again with these settings, or write to another directory." if empty else
                   "\nWrite to another directory, or delete this one to rebuild it."))
        edited = manifest_edited(root, existing)
        if edited:  # adding to it would take the shards' items as of these settings ("already cached")
            raise CacheError(f"{root / MANIFEST_NAME} is not the manifest its shards were written under ({edited}): "
                             "it was edited; restore its values (`r2 cache verify` names them), or write to another "
                             "directory")
        try:
            (root / SHARDS_DIR).mkdir(exist_ok=True)
        except FileExistsError:  # not a directory: open() says so
            pass
        cache = cls.open(root)
        cache._run_command = requested.get("command")
        return cache

    @classmethod
    def open(cls, path, *, max_open_files: int = 64) -> "FeatureCache":
        """Open an existing cache. A missing directory or one without a manifest is a
        :class:`CacheError` that says so. Unreadable shards are skipped with a warning
        (``r2 cache verify`` names them)."""
        cache = cls(path, read_manifest(path), max_open_files=max_open_files)
        cache._index.update(cache.path)
        return cache

    def refresh(self) -> bool:
        """See shards committed (or deleted) since the cache was opened. True if anything changed."""
        with self._guard():
            changed = self._index.update(self.path)
            for name in [n for n in self._handles if n not in self._index.shards]:
                self._close_handle(name)
            self._locs = {k: v for k, v in self._locs.items() if v[0] in self._index.shards}
            return changed

    # ------------------------------------------------------------------ per-process state
    def _reset_process_state(self):
        self._pid = os.getpid()
        self._handles: collections.OrderedDict[str, _Shard] = collections.OrderedDict()
        self._locs: dict = {}  # (family, id) -> (shard, {dataset: (offset, shape, dtype)})
        self._scratch = threading.local()
        # ids added by this process's writers of this cache object, not committed yet -> writer
        self._pending: dict[str, dict] = {f: {} for f in FAMILIES}
        self._pending_lock = threading.Lock()

    def _check_pid(self):
        if self._pid != os.getpid():
            # Forked (e.g. a DataLoader worker): never use the parent's HDF5 handles or
            # descriptors here; closing them closes only this process's copies.
            for handle in self._handles.values():
                handle.close()
            self._lock = threading.RLock()
            self._reset_process_state()

    def _guard(self):
        self._check_pid()
        return self._lock

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_handles", "_locs", "_scratch", "_lock", "_pid", "_pending", "_pending_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._reset_process_state()

    def close(self) -> None:
        """Close the open shard files (the cache stays usable: they reopen on demand)."""
        with self._guard():
            for name in list(self._handles):
                self._close_handle(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _close_handle(self, name):
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.close()

    def _handle(self, shard: str) -> "_Shard":
        handle = self._handles.get(shard)
        if handle is not None:
            self._handles.move_to_end(shard)
            return handle
        handle = self._handles[shard] = _Shard(self.path / SHARDS_DIR / shard, self.path)
        while len(self._handles) > max(1, self.max_open_files):
            self._close_handle(next(iter(self._handles)))
        return handle

    def _file(self, shard: str):
        """The open h5py file of a shard (this process's own)."""
        self._check_pid()
        return self._handle(shard).file()

    def _buffer(self, dtype, shape) -> np.ndarray:
        """A reusable per-thread buffer (no fresh page faults for every read)."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        bufs = getattr(self._scratch, "bufs", None)
        if bufs is None:
            bufs = self._scratch.bufs = {}
        buf = bufs.get(dtype)
        if buf is None or buf.size < n:
            buf = bufs[dtype] = np.empty(max(n, 1), dtype)
        return buf[:n].reshape(shape)

    # ------------------------------------------------------------------ ids and attributes
    def video_ids(self) -> list[str]:
        """All video ids, sorted."""
        return self._index.ids("videos")

    def query_ids(self) -> list[str]:
        """All query ids, sorted."""
        return self._index.ids("queries")

    def has_video(self, video_id: str) -> bool:
        """Cheap (a dict lookup): safe to ask for thousands of ids."""
        return video_id in self._index.items["videos"]

    def has_query(self, query_id: str) -> bool:
        return query_id in self._index.items["queries"]

    def video_shard(self, video_id: str) -> Path:
        """The shard file that holds a video."""
        return self.path / SHARDS_DIR / self._shard("videos", video_id)

    def query_shard(self, query_id: str) -> Path:
        return self.path / SHARDS_DIR / self._shard("queries", query_id)

    def _shard(self, family, item_id) -> str:
        shard = self._index.shard_of(family, item_id)
        if shard is None:
            raise MissingItemError(f"{FAMILY_WORD[family]} {item_id!r} is not in the feature cache "
                                   f"at {self.path}")
        return shard

    @contextlib.contextmanager
    def _reading(self, family, item_id, shard):
        """Turn whatever a damaged shard makes h5py or the OS raise into a CacheError."""
        try:
            yield
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(f"cannot read {FAMILY_WORD[family]} {item_id!r} from "
                             f"{self.path / SHARDS_DIR / shard}: {type(exc).__name__}: {exc}; "
                             f"run `r2 cache verify {self.path}`") from None

    def _group(self, family, item_id):
        key = f"{family}/{encode_id(item_id)}"
        shard = self._shard(family, item_id)
        f = self._file(shard)
        with self._reading(family, item_id, shard):
            found = key in f
        if not found:
            # the index was wrong about this shard (a stale sidecar): read its names again,
            # so that the index agrees with the shards, and look the id up once more
            self._index.rescan(self.path, shard)
            self._close_handle(shard)
            self._locs = {k: v for k, v in self._locs.items() if v[0] != shard}
            shard = self._shard(family, item_id)  # MissingItemError when no shard has it
            f = self._file(shard)
            with self._reading(family, item_id, shard):
                if key not in f:
                    raise CacheError(f"shard {self.path / SHARDS_DIR / shard} does not hold "
                                     f"{FAMILY_WORD[family]} {item_id!r} although its index says so; "
                                     f"run `r2 cache verify {self.path}`")
        with self._reading(family, item_id, shard):
            return f[key], shard

    def _locate(self, family, item_id):
        """``(shard, {dataset name: (byte offset or None, shape, dtype)})`` of an item, from
        the HDF5 metadata once per item and process (shards never change once committed)."""
        shard = self._shard(family, item_id)
        loc = self._locs.get((family, item_id))
        if loc is not None and loc[0] == shard:
            return loc
        # _group may find the index stale and rescan it: the item is then in another shard,
        # and the offsets read below belong to that one
        group, shard = self._group(family, item_id)
        datasets = {}
        with self._reading(family, item_id, shard):
            for name in group:
                ds = group[name]
                offset = None
                if HAVE_PREADV and ds.dtype.str in _RAW and ds.chunks is None:
                    offset = ds.id.get_offset()  # None when never written
                datasets[name] = (offset, ds.shape, ds.dtype)
        loc = self._locs[(family, item_id)] = (shard, datasets)
        return loc

    def _attrs(self, family, item_id) -> dict:
        with self._guard():
            group, shard = self._group(family, item_id)
            with self._reading(family, item_id, shard):
                return attrs_from_group(group)

    def video_attrs(self, video_id: str) -> dict:
        """The attributes given to ``add_video`` (JSON types: numpy arrays come back as lists)."""
        return self._attrs("videos", video_id)

    def query_attrs(self, query_id: str) -> dict:
        """The attributes given to ``add_query`` (e.g. ``text``)."""
        return self._attrs("queries", query_id)

    def sentence_mismatches(self, sentences: Mapping[str, str]) -> list[SentenceMismatch]:
        """The ids of ``sentences`` (``{query id: sentence}``) that the cache holds for
        another sentence: their features are of the cached ``text``, not of the given one.
        Ids the cache lacks, and queries stored without a ``text``, are not compared."""
        out = []
        for qid, sentence in sentences.items():
            if not self.has_query(qid):
                continue
            text = self.query_attrs(qid).get("text")
            if text is not None and text != sentence:
                out.append(SentenceMismatch(qid, text, sentence))
        return out

    def video_shape(self, video_id: str) -> tuple[int, int, int, int]:
        """``(T, K, N, D)`` of a video, from metadata only (no data read)."""
        with self._guard():
            t, n, d = self._locate("videos", video_id)[1][layer_name(self.layers[0])][1]
            return t, len(self.layers), n, d

    def query_shape(self, query_id: str) -> tuple[int, int, int]:
        """``(K, S, Dt)`` of a query, from metadata only."""
        with self._guard():
            s, d = self._locate("queries", query_id)[1][layer_name(self.layers[0])][1]
            return len(self.layers), s, d

    # ------------------------------------------------------------------ features
    def _layer_ids(self, layers) -> list[int]:
        if layers is None:
            return list(self.layers)
        if isinstance(layers, (int, np.integer)):
            layers = [layers]
        if len(layers) == 0:
            raise CacheError(f"layers=[] asks for no layer: give layer ids from {self.layers}, "
                             "or None for all of them")
        out = []
        for layer in layers:
            if isinstance(layer, bool) or int(layer) != layer or int(layer) not in self.layers:
                raise CacheError(f"layer {layer!r} is not in the feature cache at {self.path} "
                                 f"(it keeps layers {self.layers})")
            out.append(int(layer))
        return out

    def _raw(self, family, item_id, loc, name, dest=None) -> np.ndarray:
        """Dataset ``name`` of an item as stored, read into ``dest`` when given (same dtype
        and shape), else into a reusable scratch buffer."""
        shard, datasets = loc
        offset, shape, dtype = datasets[name]
        if dest is None:
            dest = self._buffer(dtype, shape)
        if offset is not None:
            pread_into(self._handle(shard).descriptor(), offset, dest)
        else:  # HDF5 path (no preadv, or a layout we do not read directly)
            ds = self._file(shard)[f"{family}/{encode_id(item_id)}/{name}"]
            if dest.flags.c_contiguous:
                ds.read_direct(dest)
            else:
                tmp = self._buffer(dtype, shape)
                ds.read_direct(tmp)
                np.copyto(dest, tmp)
        return dest

    def _read_f16_as_f32(self, loc, name, dest: np.ndarray) -> None:
        """A float16 dataset into float32 ``dest`` (rows contiguous) in blocks of rows that
        stay in the CPU cache: each block is read into a small scratch buffer and converted
        while it is hot, instead of reading the whole layer into a buffer too big for the
        cache and converting it from memory."""
        shard, datasets = loc
        offset, shape, _ = datasets[name]
        fd = self._handle(shard).descriptor()
        row_bytes = 2 * int(np.prod(shape[1:]))
        rows = max(1, min(shape[0], _BLOCK_BYTES // max(row_bytes, 1)))
        scratch = self._buffer(np.float16, (rows,) + tuple(shape[1:]))
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            pread_into(fd, offset + start * row_bytes, scratch[:n])
            f16_to_f32(scratch[:n], dest[start:start + n])

    def _read_layer(self, family, item_id, loc, layer: int, dest: np.ndarray) -> None:
        """One layer of an item into ``dest`` (any float dtype; may be a strided slice)."""
        name = layer_name(layer)
        _, shape, dtype = loc[1][name]
        if shape != dest.shape:
            raise CacheError(f"{FAMILY_WORD[family]} {item_id!r}: layer {layer} has shape {shape}, "
                             f"expected {dest.shape}")
        if self.dtype == "int8":
            q = self._raw(family, item_id, loc, name)
            scale = np.empty(shape[:-1], np.float32)
            self._raw(family, item_id, loc, scale_name(layer), scale)
            np.multiply(q, scale[..., None], out=dest, casting="unsafe")
            return
        if dtype == dest.dtype and (dest.flags.c_contiguous or dest[0].flags.c_contiguous):
            self._raw(family, item_id, loc, name, dest)  # straight into place
            return
        if (dtype == np.float16 and dest.dtype == np.float32 and loc[1][name][0] is not None
                and dest[0].flags.c_contiguous):
            self._read_f16_as_f32(loc, name, dest)
            return
        buf = self._raw(family, item_id, loc, name)
        if buf.dtype == np.float16 and dest.dtype == np.float32:
            f16_to_f32(buf, dest)
        else:
            np.copyto(dest, buf, casting="unsafe")

    def _out_dtype(self, dtype):
        if dtype is None:
            return np.dtype(np.float16 if self.dtype == "float16" else np.float32)
        return _float_dtype(np.dtype(dtype), "dtype")

    def load_video(self, video_id: str, layers=None, dtype=np.float32, out=None) -> np.ndarray:
        """Features of a video: ``(T, K', N, D)`` for the layers asked (all by default), in
        ``dtype`` (float32 by default; None = the stored float type; int8 is dequantised).

        ``out``: an array of shape ``(T, K', N, D)`` to read into (e.g. a slice of a padded
        batch), which spares an allocation; its dtype wins over ``dtype``. The layers are
        read one contiguous dataset each, in one pass over the open shard.
        """
        ids = self._layer_ids(layers)
        out_dtype = self._out_dtype(dtype) if out is None else _float_dtype(out.dtype, "out")
        with self._guard():
            loc = self._locate("videos", video_id)
            with self._reading("videos", video_id, loc[0]):
                t, n, d = loc[1][layer_name(ids[0])][1]
                shape = (t, len(ids), n, d)
                if out is None:
                    out = np.empty(shape, out_dtype)
                elif out.shape != shape:
                    raise CacheError(f"out has shape {out.shape}; video {video_id!r} needs {shape}")
                for k, layer in enumerate(ids):
                    self._read_layer("videos", video_id, loc, layer, out[:, k])
        return out

    def load_query(self, query_id: str, layers=None, dtype=np.float32) -> QueryFeatures:
        """Features of a query: ``(K', S, Dt)`` features and their ``(S,)`` bool mask."""
        ids = self._layer_ids(layers)
        out_dtype = self._out_dtype(dtype)
        with self._guard():
            loc = self._locate("queries", query_id)
            with self._reading("queries", query_id, loc[0]):
                s, d = loc[1][layer_name(ids[0])][1]
                out = np.empty((len(ids), s, d), out_dtype)
                for k, layer in enumerate(ids):
                    self._read_layer("queries", query_id, loc, layer, out[k])
                mask = self._raw("queries", query_id, loc, "mask", np.empty(s, np.uint8)).astype(bool)
        return QueryFeatures(out, mask)

    def _check_stored(self, family, item_id) -> None:
        from .verify import _check_item

        with self._guard():
            group, shard = self._group(family, item_id)
            with self._reading(family, item_id, shard):
                problems = _check_item(group, family, self.layers, self.dtype, quick=False)
        if problems:
            raise CacheError(f"{FAMILY_WORD[family]} {item_id!r} in {self.path / SHARDS_DIR / shard} is damaged "
                             f"({'; '.join(problems[:3])}); run `r2 cache verify {self.path}`")

    def check_video(self, video_id: str) -> None:
        """Read every stored dataset of a video and check it as ``r2 cache verify`` does (its
        crc32, finite values, dtypes, shapes): a CacheError naming the shard and what is wrong
        when it is damaged. Reads do not check (a NaN check alone would add a quarter to a warm
        read's time); callers ask this when what they computed from an item is not finite."""
        self._check_stored("videos", video_id)

    def check_query(self, query_id: str) -> None:
        """:meth:`check_video` for a query."""
        self._check_stored("queries", query_id)

    # ------------------------------------------------------------------ writing and summary
    def writer(self, **options):
        """A :class:`~r2.cache.writer.CacheWriter` (context manager) adding items to this
        cache; see its docstring for ``max_shard_bytes``, ``max_shard_items``, ``on_commit``."""
        from .writer import CacheWriter

        return CacheWriter(self, **options)

    def shard_paths(self) -> list[Path]:
        """The committed shard files the index knows."""
        return [self.path / SHARDS_DIR / n for n in sorted(self._index.shards)]

    def info(self) -> "CacheInfo":
        """A summary: items, layers, dtype, shards, bytes, and what needs attention."""
        idx = self._index
        fam = collections.Counter(e.family for e in idx.shards.values())
        partials = list_partials(self.path)
        m = self.manifest
        return CacheInfo(
            path=str(self.path),
            format_version=m.get("format_version"),
            r2_version=m.get("r2_version"),
            created=m.get("created"),
            model_id=m.get("model_id"),
            model_weights_hash=m.get("model_weights_hash"),
            model_config_hash=m.get("model_config_hash"),
            layers=self.layers,
            dtype=self.dtype,
            fps=m.get("fps"),
            precision=m.get("precision", "fp32"),
            token_form=m.get("token_form"),
            sampling=m.get("sampling"),
            tokens_per_frame=m.get("tokens_per_frame"),
            video_width=m.get("video_width"),
            query_width=m.get("query_width"),
            videos=len(idx.items["videos"]),
            queries=len(idx.items["queries"]),
            shards=len(idx.shards),
            video_shards=fam["videos"],
            query_shards=fam["queries"],
            bytes=sum(e.size for e in idx.shards.values()),
            unreadable_shards=sorted(idx.bad),
            partial_shards=[p.name for p in partials],
            duplicate_ids=len(idx.duplicates),
            command=m.get("command"),
            writers=self._live_writers(),
        )

    def _live_writers(self) -> list[dict]:
        """The writers adding to this cache now (another process's ``r2 extract``), with how
        many videos each has claimed; [] where the lock files cannot be read (or where there is
        no ``flock``: reading works anywhere)."""
        try:
            return [{"prefix": w.prefix, "host": w.host, "pid": w.pid, "videos_claimed": len(w.claimed)}
                    for w in LiveWriters(self.path).read()]
        except (OSError, ImportError):
            return []

    def __repr__(self):
        return (f"FeatureCache({str(self.path)!r}, videos={len(self._index.items['videos'])}, "
                f"queries={len(self._index.items['queries'])}, layers={self.layers}, dtype={self.dtype!r})")

