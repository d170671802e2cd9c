"""The shard files: names, id encoding, HDF5 layout, and the per-writer lock files.

Directory layout of a cache::

    DIR/manifest.json
    DIR/shards/videos-<prefix>-<seq>-c<crc>.h5   committed video shards (immutable)
    DIR/shards/queries-<prefix>-<seq>-c<crc>.h5  committed query shards
    DIR/shards/*.h5.partial                 being written (readers never look at them)
    DIR/shards/<prefix>-s<seq>.spill.partial    raw parts of a large video not committed yet
    DIR/locks/<prefix>.lock                 held (flock) by the live writer of <prefix>; after
                                            its "host pid" line, the video ids it has claimed
    DIR/locks/claims.mutex                  flock'd while a writer claims a video
    DIR/index.json                          optional sidecar index, validated on every open

``<prefix>`` is ``<host>-<pid>-<8 random hex>``, unique per writer, so two writers (threads,
processes, machines sharing a file system) never write the same file. ``<seq>`` counts the
writer's shards per family from 00000. A committed name ends in ``-c<crc32>`` (8 hex), the
crc32 of the whole file computed at commit: ``verify`` recomputes it, so a flipped byte
anywhere in the file, even in unused space, is found.

Inside a shard (HDF5, no compression, contiguous datasets so that a read is one sequential
read at disk speed)::

    /videos/<encoded id>          group, attribute "attrs" = JSON of the caller's attributes
        L<layer>                  (T, N, D) float16 | float32 | int8, attribute crc32
        L<layer>_scale            (T, N) float32, int8 caches only, attribute crc32
    /queries/<encoded id>
        L<layer>                  (S, Dt), as above (+ L<layer>_scale for int8)
        mask                      (S,) uint8, attribute crc32

The file's own attributes: ``r2_shard_format``, ``family``, ``writer`` (the prefix) and, when
known, ``command``: the command line of the run that wrote the shard (``verify`` quotes it
to rebuild a damaged shard; it can differ from the manifest's ``command``, e.g. for the
``--num-shards``/``--shard-index`` slices of one extraction, or in a merged cache).

A shard holds one family (videos or queries). Besides the whole-file crc32 in the name, the
crc32 of every dataset's bytes is stored when it is written: ``verify`` uses them to say which
item of a damaged file is hit (reads do not pay for checksums). HDF5's own metadata
checksums (file format >= 1.8, which we ask for) make a damaged structure fail to open, and
a truncated file fails to open.

Ids are arbitrary strings (``/``, spaces, dots, non-ASCII). HDF5 link names cannot hold ``/``
and ``.``/``..`` are special, so a name keeps ``[A-Za-z0-9_-]`` and writes every other UTF-8
byte as ``%XX`` (:func:`encode_id`); :func:`decode_id` inverts it exactly. Ids that came from
file names with undecodable bytes (``surrogateescape``) round-trip too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import zlib
from pathlib import Path
from typing import AbstractSet, NamedTuple
from urllib.parse import unquote

import h5py
import numpy as np

from .errors import CacheError
from .locking import create_locked, lock_if_current, try_flock

SHARDS_DIR = "shards"
LOCKS_DIR = "locks"
INDEX_NAME = "index.json"
FAMILIES = ("videos", "queries")
FAMILY_WORD = {"videos": "video", "queries": "query"}  # an item of a family, in messages
SHARD_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".h5.partial"
SPILL_SUFFIX = ".spill.partial"  # <prefix>-s<seq>.spill.partial: a video too large for RAM, being written
# shard attribute: manifest.manifest_fingerprint of the manifest the shard was written under
# (absent in shards written before r2 recorded it)
FINGERPRINT_ATTR = "manifest_fingerprint"
# shard attribute: the fields that fingerprint hashes (manifest.fingerprint_text), so that
# verify can name the fields an edited manifest changed (absent in shards of r2 before it)
FINGERPRINT_FIELDS_ATTR = "manifest_fields"
# the pinned axes of a stored layer, (T, N, D) of a video and (S, Dt) of a query: the manifest
# key that holds the cache's value and the axis
PINNED_AXES = {"videos": (("tokens_per_frame", 1), ("video_width", 2)), "queries": (("query_width", 1),)}
LOCK_TMP_SUFFIX = ".tmp"  # locks/.<prefix>.lock.tmp: a lock being taken (see WriterLock)
LIBVER = ("v108", "v110")  # metadata checksums; readable by HDF5 >= 1.10
_LIBVER_BOUNDS = {"v108": h5py.h5f.LIBVER_V18, "v110": h5py.h5f.LIBVER_V110}

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SPILL_RE = re.compile(r"^(.+)-s(\d{5,})\.spill\.partial$")
_SHARD_RE = re.compile(r"^(videos|queries)-(.+)-(\d{5,})(?:-c([0-9a-f]{8}))?\.h5(\.partial)?$")


def describe_pinned(key: str, value: int) -> str:
    """A pinned axis (:data:`PINNED_AXES`) of an item in words: ``"width 768"`` or ``"50 tokens per frame"``."""
    return f"width {value}" if key.endswith("width") else f"{value} tokens per frame"


# --------------------------------------------------------------------------- ids
def encode_id(item_id: str) -> str:
    """An id as an HDF5 link name: ``[A-Za-z0-9_-]`` kept, every other UTF-8 byte ``%XX``."""
    if not isinstance(item_id, str):
        raise TypeError(f"ids are str, got {type(item_id).__name__}: {item_id!r}")
    if not item_id:
        raise ValueError("an id cannot be empty")
    raw = item_id.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def decode_id(name: str) -> str:
    return unquote(name, encoding="utf-8", errors="surrogateescape")


# --------------------------------------------------------------------------- names
def new_prefix() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname() or "host")[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class ShardName(NamedTuple):
    family: str
    prefix: str
    seq: int
    crc: int | None  # crc32 of the whole file, recorded in the name when it was committed
    partial: bool


def shard_name(family: str, prefix: str, seq: int, crc: int | None = None) -> str:
    """``<family>-<prefix>-<seq>[-c<crc32 of the file>].h5``"""
    tail = "" if crc is None else f"-c{crc:08x}"
    return f"{family}-{prefix}-{seq:05d}{tail}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> ShardName | None:
    """The parts of a shard file name, or None when ``name`` is not a shard file."""
    m = _SHARD_RE.match(name)
    if not m:
        return None
    return ShardName(m.group(1), m.group(2), int(m.group(3)),
                     None if m.group(4) is None else int(m.group(4), 16), m.group(5) is not None)


def file_crc32(path, chunk: int = 8 * 2**20) -> int:
    """crc32 of a whole file, read sequentially."""
    crc = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                return crc
            crc = zlib.crc32(view[:n], crc)


def list_shards(root: Path) -> dict[str, os.stat_result]:
    """Committed shard files of a cache (``*.h5``; partials ignored) -> their stat."""
    out = {}
    shards = Path(root) / SHARDS_DIR
    try:
        entries = list(os.scandir(shards))
    except FileNotFoundError:
        return out
    except NotADirectoryError:
        raise CacheError(f"{shards} is not a directory (a feature cache keeps its shard files "
                         "there): move it away, or rebuild the cache") from None
    except OSError as exc:
        raise CacheError(f"cannot list the shards of the cache in {shards}: {exc.strerror or exc}") from None
    for e in entries:
        parsed = parse_shard_name(e.name)
        if parsed and not parsed.partial:
            try:
                out[e.name] = e.stat()
            except FileNotFoundError:  # deleted meanwhile
                continue
    return out


def spill_name(prefix: str, seq: int) -> str:
    """``<prefix>-s<seq>.spill.partial``: raw parts of a video a writer has not committed yet
    (see ``VideoSink``); removed on commit or abort, or with the partials of a dead writer."""
    return f"{prefix}-s{seq:05d}{SPILL_SUFFIX}"


def partial_prefix(name: str) -> str | None:
    """The writer prefix of a partial shard or spill file name (None: neither)."""
    m = _SPILL_RE.match(name)
    if m:
        return m.group(1)
    parsed = parse_shard_name(name)
    return parsed.prefix if parsed and parsed.partial else None


def list_partials(root: Path) -> list[Path]:
    """Partial shards and spill files (what a running or a killed writer has not committed)."""
    d = Path(root) / SHARDS_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.endswith((PARTIAL_SUFFIX, SPILL_SUFFIX)))


# --------------------------------------------------------------------------- HDF5 files
def open_h5(path, mode="r"):
    """Open an HDF5 file without HDF5's own file locking (shards are immutable once
    committed; partials are private to their writer; HDF5 locks fail on some network file
    systems). Mode ``"w-"`` creates it as :func:`create_h5` does."""
    if mode in ("w-", "x"):
        return create_h5(path)
    kw = {"libver": LIBVER} if mode != "r" else {}
    try:
        return h5py.File(path, mode, locking=False, **kw)
    except (TypeError, ValueError) as exc:  # very old HDF5 without the locking property
        if "locking" not in str(exc):
            raise
    except OSError as exc:  # already open in this process with HDF5's default locking
        if "locking flag" not in str(exc):
            raise
    return h5py.File(path, mode, **kw)


def create_h5(path):
    """Create the HDF5 file ``path`` (failing when it exists) as ``h5py.File(path, "w-",
    libver=LIBVER, locking=False)`` does, except that HDF5's sieve buffer (64 KiB of raw data
    that it writes out later, when a dataset is closed) is off: every write goes to the file
    when it is made, so a full disk fails the write itself. With the buffer, a small dataset's
    data could fail to be written only when the dataset was closed, and such a dataset stays
    open in HDF5, which closes it again at exit, after its file: a crash (SIGSEGV in
    ``H5D_close``) after the error had been reported. The shard's large writes bypass the
    buffer in any case; a query's layers (a few KiB each) are then one write each."""
    from h5py import h5f, h5p

    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(*(_LIBVER_BOUNDS[v] for v in LIBVER))
    fapl.set_sieve_buf_size(0)
    if hasattr(fapl, "set_file_locking"):  # (HDF5 >= 1.12.1)
        fapl.set_file_locking(False, ignore_when_disabled=False)  # h5py's locking=False
    fcpl = h5p.create(h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)  # h5py's default
    fid = h5f.create(os.fsencode(os.fspath(path)), h5f.ACC_EXCL, fapl=fapl, fcpl=fcpl)
    return h5py.File(fid)


def crc32(a: np.ndarray, value: int = 0) -> int:
    """The crc32 of ``a``'s bytes; ``value``: the crc32 of the bytes before them (running crc)."""
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), value)


def layer_name(layer: int) -> str:
    return f"L{int(layer)}"


def scale_name(layer: int) -> str:
    return f"L{int(layer)}_scale"


def _put(group, name, data) -> int:
    ds = group.create_dataset(name, data=data)  # contiguous, uncompressed
    ds.attrs["crc32"] = np.uint32(crc32(data))
    return data.nbytes


def attrs_to_json(attrs: dict) -> str:
    def default(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        raise TypeError(f"attribute value {o!r} of type {type(o).__name__} cannot be stored "
                        "(use str, numbers, bools, None, lists, dicts or numpy arrays)")
    return json.dumps(attrs, default=default)  # ASCII: lone surrogates of odd file names survive


def set_text_attr(obj, name: str, text: str) -> None:
    """A string attribute stored as fixed-length bytes. (h5py's default, a variable-length
    string, lives in HDF5's global heap, which has no checksum: a flipped byte there can make
    HDF5 loop forever. Fixed-length attributes live in the checksummed object header, or in
    the checksummed dense attribute storage when large.)"""
    obj.attrs.create(name, np.bytes_(text.encode("utf-8")))


def get_text_attr(obj, name: str):
    raw = obj.attrs.get(name)
    if isinstance(raw, (bytes, np.bytes_)):
        return bytes(raw).decode("utf-8")
    return raw


def attrs_from_group(group) -> dict:
    raw = get_text_attr(group, "attrs")
    return {} if raw is None else json.loads(raw)


class GroupNotRemoved(Exception):
    """An item failed half-way and its group could not be removed from the shard either (a full
    disk): the shard holds a half-written item. ``cause``: the item's own failure."""

    def __init__(self, path: str, cause: BaseException):
        super().__init__(f"{path}: could not be removed after {type(cause).__name__}: {cause}")
        self.path, self.cause = path, cause


@contextlib.contextmanager
def _new_item_group(h5file, family: str, item_id: str, attrs_json: str):
    """The new group of one item, with its ``attrs``; removed again if the block fails (when
    that fails too: :class:`GroupNotRemoved`)."""
    path = f"{family}/{encode_id(item_id)}"
    if path in h5file:
        raise CacheError(f"{FAMILY_WORD[family]} {item_id!r} was already added to this shard")
    group = h5file.require_group(family).create_group(encode_id(item_id))
    try:
        set_text_attr(group, "attrs", attrs_json)
        yield group
    except BaseException as exc:
        try:
            del h5file[path]
        except Exception as failure:
            raise GroupNotRemoved(path, exc) from failure
        raise


def write_item(h5file, family: str, item_id: str, layers, arrays, scales, mask, attrs_json: str) -> int:
    """Write one item group; on any failure the half-written group is removed. Returns bytes."""
    with _new_item_group(h5file, family, item_id, attrs_json) as group:
        nbytes = 0
        for k, layer in enumerate(layers):
            nbytes += _put(group, layer_name(layer), arrays[k])
            if scales is not None:
                nbytes += _put(group, scale_name(layer), scales[k])
        if mask is not None:
            nbytes += _put(group, "mask", mask)
        return nbytes


def write_video_blocks(h5file, family: str, item_id: str, layers, shape, dtype, int8: bool, blocks,
                       attrs_json: str) -> int:
    """Write one video group from ``blocks``: ``(data (c, K, N, D), scales (c, K, N) | None)`` in
    clip order, ``sum(c) == shape[0]``, already in the stored ``dtype``; each layer is one
    contiguous ``shape = (T, N, D)`` dataset (as :func:`write_item` writes it), filled block by
    block, its crc32 computed on the way. On any failure the half-written group is removed."""
    t_total = int(shape[0])
    with _new_item_group(h5file, family, item_id, attrs_json) as group:
        data_sets, scale_sets = [], []
        for layer in layers:
            data_sets.append(group.create_dataset(layer_name(layer), shape=tuple(shape), dtype=dtype))
            if int8:
                scale_sets.append(group.create_dataset(scale_name(layer), shape=tuple(shape[:2]), dtype=np.float32))
        crcs = [0] * len(data_sets)
        scale_crcs = [0] * len(scale_sets)
        t = 0
        for data, scales in blocks:
            c = len(data)
            if t + c > t_total:
                raise CacheError(f"{FAMILY_WORD[family]} {item_id!r}: more clips than announced ({t_total})")
            for k, ds in enumerate(data_sets):
                a = np.ascontiguousarray(data[:, k])
                ds[t:t + c] = a
                crcs[k] = crc32(a, crcs[k])
                if int8:
                    sc = np.ascontiguousarray(scales[:, k])
                    scale_sets[k][t:t + c] = sc
                    scale_crcs[k] = crc32(sc, scale_crcs[k])
            t += c
        if t != t_total:
            raise CacheError(f"{FAMILY_WORD[family]} {item_id!r}: {t} clips written, {t_total} announced")
        nbytes = 0
        for ds, crc in zip(data_sets + scale_sets, crcs + scale_crcs):
            ds.attrs["crc32"] = np.uint32(crc)
            nbytes += ds.nbytes
        return nbytes


def read_ids(h5file, family: str) -> list[str]:
    if family not in h5file:
        return []
    return [decode_id(n) for n in h5file[family].keys()]


# --------------------------------------------------------------------------- writer locks
def lock_path(root: Path, prefix: str) -> Path:
    return Path(root) / LOCKS_DIR / f"{prefix}.lock"


class WriterLock:
    """An exclusive ``flock`` on ``DIR/locks/<prefix>.lock``, held for the life of a writer.
    The kernel drops it when the process dies (even by SIGKILL), which is how another
    writer tells a dead writer's partial shards from a live one's."""

    def __init__(self, root: Path, prefix: str):
        self.path = lock_path(root, prefix)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Locked under a temporary name, then renamed: a lock file visible under its final
        # name is always held by a live writer, so a cleaner can never take it for a dead one.
        # A cleaner may delete the temporary file before it is locked (it cannot tell it from
        # one a killed writer left): create_locked makes it again then.
        tmp = self.path.with_name(f".{self.path.name}{LOCK_TMP_SUFFIX}")
        self._fd = create_locked(tmp, lambda p: os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL
                                                        | getattr(os, "O_CLOEXEC", 0), 0o644))
        try:
            os.write(self._fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            os.rename(tmp, self.path)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            tmp.unlink(missing_ok=True)
            raise

    def append_claim(self, item_id: str) -> None:
        """Record ``item_id`` as this writer's, one JSON line after the owner line: a claim is
        valid exactly as long as this lock is held (it goes with the file)."""
        os.write(self._fd, (json.dumps(item_id) + "\n").encode())

    def release(self):
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class LiveWriter(NamedTuple):
    """A writer of a cache that is alive now (its lock is held): its prefix, the host and process
    id it wrote into its lock file (empty / None when unreadable), and the video ids it has
    claimed (:meth:`~r2.cache.writer.CacheWriter.claim_video`)."""

    prefix: str
    host: str
    pid: int | None
    claimed: AbstractSet[str] = frozenset()  # (the reader's own set, not a copy: read it, do not keep it)

    @property
    def label(self) -> str:
        """``pid P on HOST``, or the prefix when the lock file named no pid."""
        return f"pid {self.pid} on {self.host}" if self.pid is not None else self.prefix


CLAIMS_MUTEX = "claims.mutex"


@contextlib.contextmanager
def claims_mutex(root: Path):
    """Hold the cache's claims mutex (``locks/claims.mutex``, an exclusive ``flock``, waited
    for): reading the other writers' claims and recording one's own is one step."""
    import fcntl

    fd = os.open(Path(root) / LOCKS_DIR / CLAIMS_MUTEX, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class LiveWriters:
    """The live writers of a cache other than ``own_prefix``, with their claims, read
    incrementally (each lock file from where the last read ended; a lock file is only appended
    to, and a line is taken once its newline is there). Nothing is removed, and a dead writer's
    lock is only tried (shared, without waiting) and let go. Reading it under
    :func:`claims_mutex` gives claims no other writer can add to meanwhile."""

    def __init__(self, root: Path, own_prefix: str | None = None):
        self.root, self.own_prefix = Path(root), own_prefix
        self._files: dict[str, tuple[int, int, str, int | None, set]] = {}  # prefix -> (inode, offset, host, pid, ids)

    def read(self) -> list[LiveWriter]:
        """The writers alive now (their lock held), by prefix."""
        import fcntl  # POSIX only, as the writers' locks

        alive: dict[str, LiveWriter] = {}
        locks = self.root / LOCKS_DIR
        for lk in sorted(locks.glob("*.lock")) if locks.is_dir() else ():
            prefix = lk.name[: -len(".lock")]
            if prefix == self.own_prefix:
                continue
            try:
                fd = os.open(lk, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:  # removed meanwhile: that writer finished
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    continue  # free: its writer is dead, its claims with it
                except OSError:
                    pass  # held: alive
                ino = os.fstat(fd).st_ino
                seen_ino, offset, host, pid, ids = self._files.get(prefix, (ino, 0, "", None, set()))
                if seen_ino != ino:
                    offset, host, pid, ids = 0, "", None, set()
                os.lseek(fd, offset, os.SEEK_SET)
                chunks = []
                while True:
                    b = os.read(fd, 1 << 16)
                    if not b:
                        break
                    chunks.append(b)
                data = b"".join(chunks)
                lines = data.split(b"\n")
                whole = data[: len(data) - len(lines[-1])]  # up to the last newline
                for i, line in enumerate(lines[:-1]):
                    if offset == 0 and i == 0:  # the owner line, "host pid"
                        host, _, number = line.decode(errors="replace").strip().partition(" ")
                        pid = int(number) if number.isdigit() else None
                        continue
                    try:
                        ids.add(json.loads(line))
                    except ValueError:
                        pass
                self._files[prefix] = (ino, offset + len(whole), host, pid, ids)
                alive[prefix] = LiveWriter(prefix, host, pid, ids)
            finally:
                os.close(fd)
        for gone in set(self._files) - set(alive):
            del self._files[gone]
        return list(alive.values())


def _owner_is_dead(root: Path, prefix: str) -> tuple[bool, int | None]:
    """``(dead, fd)``: try the owner's lock; when we get it the owner is gone and we keep
    the lock (``fd``) until its leftovers are removed."""
    try:
        fd = try_flock(lock_path(root, prefix))
    except FileNotFoundError:
        return True, None  # no lock file: its writer finished or never got that far
    return fd is not None, fd


def _remove_if_unlocked(path: Path) -> bool:
    """Delete ``path`` unless a live process holds a ``flock`` on it."""
    try:
        fd = lock_if_current(path)
    except OSError:
        return False
    if fd is None:
        return False  # held (its writer is alive and about to rename it), or made anew
    try:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def remove_stale_partials(root: Path, own_prefix: str | None = None) -> list[Path]:
    """Delete the partial shards (and lock files) of writers that are no longer alive.
    A live writer's partials are left alone. Returns the removed partials."""
    root = Path(root)
    by_prefix: dict[str, list[Path]] = {}
    for p in list_partials(root):
        prefix = partial_prefix(p.name)
        if prefix is not None and prefix != own_prefix:
            by_prefix.setdefault(prefix, []).append(p)
    locks = root / LOCKS_DIR
    if locks.is_dir():
        for lk in locks.glob("*.lock"):
            prefix = lk.name[: -len(".lock")]
            if prefix != own_prefix:
                by_prefix.setdefault(prefix, [])
    if locks.is_dir():  # a writer killed while taking its lock leaves .<prefix>.lock.tmp
        for tmp in locks.glob(f".*.lock{LOCK_TMP_SUFFIX}"):
            _remove_if_unlocked(tmp)
    removed = []
    for prefix, partials in sorted(by_prefix.items()):
        dead, fd = _owner_is_dead(root, prefix)
        if not dead:
            continue
        try:
            for p in partials:
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
            with contextlib.suppress(OSError):
                lock_path(root, prefix).unlink()
        finally:
            if fd is not None:
                os.close(fd)
    return removed
