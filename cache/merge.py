"""``merge``: join caches with compatible manifests into a new one.

Every item is copied as it is stored (HDF5 object copy: no re-encoding, int8 scales and
checksums kept) into fresh shards of the output. Before it is copied, each item of each
source is read whole and checked as ``verify`` checks it (every layer present, dtypes and
shapes, each dataset against its own crc32 attribute, finite values): a merge reads all of its
sources, and a damaged source is refused (naming the item and its shard, with ``r2 cache
verify SRC`` to find the rest) instead of being laundered into output shards whose fresh file
checksums would hide the damage. So is a source shard written under other manifest settings
than its cache's ``manifest.json`` (its manifest fingerprint differs). The output's shards
record the fingerprint of the output's manifest. An id present in more than one source (or
twice in one) is kept once when its data are byte-identical, and is an error naming the id
and both places when they differ. Each output shard holds items written by one command
(the source shard's ``command``, else its cache's), which it records, so ``verify`` can say
how to rebuild it. The output is built in a temporary sibling directory
(``.<out>.merge-<random>.tmp``, locked while the merge runs) and renamed into place only when
everything succeeded, so a failed or interrupted merge leaves no half-written output; the
temporary directory of a merge that was killed is removed by the next merge into the same
``out``, with a warning.

(Because shard names are unique per writer, copying the ``shards/*.h5`` files of caches with
identical manifests into one ``shards/`` folder also works; ``merge`` additionally checks the
manifests and the duplicate rule.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import os
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CacheError, CacheWarning
from .locking import create_locked, lock_if_current
from .manifest import (describe_differences, differences, manifest_fingerprint, r2_version, utc_now,
                       write_manifest_exclusive)
from .reader import FeatureCache
from .shards import FAMILY_WORD, FINGERPRINT_ATTR, SHARDS_DIR, encode_id, get_text_attr, open_h5
from .verify import _check_item


@dataclass
class _Placed:
    """Where the copy of an id that went into the output came from."""

    source: Path  # the source cache, as given
    shard: Path  # its shard file


def _same_data(g1, g2) -> bool:
    if sorted(g1.keys()) != sorted(g2.keys()):
        return False
    for name in g1.keys():
        a, b = g1[name], g2[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.attrs.get("crc32") != b.attrs.get("crc32"):
            return False
        if not np.array_equal(a[()].view(np.uint8), b[()].view(np.uint8)):
            return False
    return True


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary directories of killed merges into ``out`` (a running merge
    holds the lock of its own, which is left alone)."""
    for tmp in sorted(out.parent.glob(f".{glob.escape(out.name)}.merge-*.tmp")):
        if not tmp.is_dir() or tmp.is_symlink():
            continue
        try:
            fd = lock_if_current(tmp, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed meanwhile by another merge into the same output
        if fd is None:
            continue  # a merge into the same output is running (or just made it anew)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)
        warnings.warn(f"removed {tmp}, the unfinished output of a merge into {out} that was stopped",
                      CacheWarning, stacklevel=3)


def _new_locked_dir(path: Path) -> int:
    """Make the directory ``path`` and lock it (see ``locking.create_locked``: another merge
    into the same output may take it for a killed merge's before it is locked)."""
    def create(p: Path) -> int:
        p.mkdir()
        try:
            return os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except BaseException:
            p.rmdir()
            raise
    return create_locked(path, create)


@contextlib.contextmanager
def _open_source(path: Path, source: Path):
    """A source shard opened read-only for the merge (closed when the block ends)."""
    try:
        f = open_h5(path)
    except Exception as exc:
        raise CacheError(f"cannot read shard {path}: {type(exc).__name__}: {exc}; run "
                         f"`r2 cache verify {source}` and repair it before merging") from None
    with f:
        yield f


@contextlib.contextmanager
def _reading(word: str, item_id: str, path: Path, source: Path):
    """Turn what a damaged source makes h5py or the OS raise into a one-line CacheError."""
    try:
        yield
    except CacheError:
        raise
    except Exception as exc:
        raise CacheError(f"cannot read {word} {item_id!r} from {path}: {type(exc).__name__}: {exc}; "
                         f"run `r2 cache verify {source}` and repair it before merging") from None


def _check_fingerprint(f, cache: FeatureCache, source: Path) -> None:
    """Refuse a source shard written under other manifest settings than its cache's (a
    shard of an older r2 records none: accepted)."""
    try:
        recorded = get_text_attr(f, FINGERPRINT_ATTR)
    except Exception as exc:
        raise CacheError(f"cannot read the attributes of shard {f.filename}: {type(exc).__name__}: {exc}; "
                         f"run `r2 cache verify {source}` and repair it before merging") from None
    if isinstance(recorded, str) and recorded != manifest_fingerprint(cache.manifest):
        raise CacheError(f"{f.filename} was written under other manifest settings than "
                         f"{cache.path / 'manifest.json'} has (its manifest fingerprint differs); "
                         f"run `r2 cache verify {source}` and repair it before merging")


def _merge_item(writer, summary: dict, placed: dict, f, source: Path, cache: FeatureCache, family: str,
                item_id: str, command) -> None:
    """Check one item of the open source shard ``f`` and copy it into the output, or, when
    its id was copied already, compare the two copies' bytes."""
    word, path = FAMILY_WORD[family], Path(f.filename)
    key = f"{family}/{encode_id(item_id)}"
    with _reading(word, item_id, path, source):
        group = f[key]
        problems = _check_item(group, family, cache.layers, cache.dtype, False)
    if problems:
        raise CacheError(f"{word} {item_id!r} in {path} is damaged ({'; '.join(problems[:3])}); run "
                         f"`r2 cache verify {source}` and repair it before merging")
    where = placed.get((family, item_id))
    if where is None:
        try:
            writer._copy(family, item_id, group, command)
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(f"cannot copy {word} {item_id!r} from {path} into the merge output: "
                             f"{type(exc).__name__}: {exc} (a full disk? else a damaged source: run "
                             f"`r2 cache verify {source}`)") from None
        placed[(family, item_id)] = _Placed(source, path)
        summary[family] += 1
        return
    same_file = where.shard.resolve() == path.resolve()  # the same cache given twice
    with (contextlib.nullcontext(f) if same_file else _open_source(where.shard, where.source)) as first:
        with _reading(word, item_id, where.shard, where.source):
            other = first[key]
        with _reading(word, item_id, path, source):
            same = _same_data(other, group)
    if not same:
        raise CacheError(f"{word} {item_id!r} is in {where.shard} and in {path} with different data; "
                         "remove one of them (delete its shard and re-extract) and merge again")
    summary["duplicates_identical"] += 1


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary output to ``out`` (an empty directory there is replaced);
    a one-line CacheError when another process made ``out`` meanwhile (a second merge into it)."""
    try:
        if out.exists():
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: renamed onto below
                out.rmdir()  # empty when the merge started
        os.rename(tmp, out)
    except OSError as exc:
        taken = exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR)
        with contextlib.suppress(OSError):
            taken = taken or (out.exists() and (not out.is_dir() or any(out.iterdir())))
        if taken:
            raise CacheError(f"the merge output {out} was created by another process meanwhile (another "
                             "merge into it?); this merge kept nothing: check what is there, or merge into "
                             "a new directory") from None
        raise CacheError(f"cannot move the merge output into place at {out}: {exc}") from None


@dataclass(frozen=True)
class MergeSummary:
    """What :func:`merge` made."""

    out: str  # the merged cache
    videos: int
    queries: int
    duplicates_identical: int  # ids in two sources with identical data, kept once
    shards: int
    bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def merge(sources, out, *, progress=None, max_shard_bytes: int | None = None,
          max_shard_items: int | None = None) -> MergeSummary:
    """Merge the caches at ``sources`` into a new cache at ``out`` (which must not exist, or
    be an empty directory). Returns a :class:`MergeSummary`. ``progress(done, total)`` is called after each source shard.

    Raises :class:`CacheError` (nothing is left at ``out``) when a source is missing, has
    unreadable shards or a damaged item (every item is read whole and checked, so a merge
    reads all of its sources once more than it copies), a shard written under other manifest
    settings, its manifest is incompatible with the first source's, an id is present twice
    with different data, or another process made ``out`` meanwhile.
    """
    sources = [Path(s) for s in sources]
    out = Path(out)
    if not sources:
        raise CacheError("merge needs at least one source cache")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CacheError(f"the merge output {out} already exists and is not empty; choose a new directory")
    options = {k: v for k, v in (("max_shard_bytes", max_shard_bytes),
                                 ("max_shard_items", max_shard_items)) if v is not None}
    caches: list[FeatureCache] = []
    try:  # the sources' shard files are closed however the merge ends
        for s in sources:
            caches.append(FeatureCache.open(s))
        counts = _merge(sources, caches, out, progress, options)
    finally:
        for c in caches:
            c.close()
    with FeatureCache.open(out) as result:
        info = result.info()
    return MergeSummary(str(result.path), counts["videos"], counts["queries"], counts["duplicates_identical"],
                        info.shards, info.bytes)


def _merge(sources: list[Path], caches: list[FeatureCache], out: Path, progress, options) -> dict:
    out_path = Path(os.path.abspath(out)).resolve()
    for s, c in zip(sources, caches):
        if out_path == c.path.resolve():
            raise CacheError(f"the merge output {out} is also a source")
        if c.path.resolve() in out_path.parents:
            raise CacheError(f"the merge output {out} is inside the source cache {s}; choose a "
                             "directory outside every source")
        if c._index.bad:
            raise CacheError(f"{s} has unreadable shards ({', '.join(sorted(c._index.bad))}); "
                             f"run `r2 cache verify {s}` and repair it before merging")
    first = caches[0]
    for s, c in zip(sources[1:], caches[1:]):
        diffs = differences(first.manifest, c.manifest)
        if diffs:
            raise CacheError(f"cannot merge {s} into {sources[0]}: the manifests differ\n"
                             + describe_differences(diffs, f"{sources[0]} has", f"{s} has"))

    manifest = dict(first.manifest)
    manifest["created"] = utc_now()
    manifest["r2_version"] = r2_version()
    manifest["merged_from"] = [str(c.path) for c in caches]
    commands = list(dict.fromkeys(c.manifest["command"] for c in caches if c.manifest.get("command")))
    manifest.pop("command", None)
    manifest.pop("source_commands", None)
    if len(commands) == 1:
        manifest["command"] = commands[0]
    elif commands:
        manifest["source_commands"] = commands

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.merge-{secrets.token_hex(4)}.tmp"
    writer = target = None
    summary = {"videos": 0, "queries": 0, "duplicates_identical": 0}
    # locked until the end: tells a later merge into the same output that this one runs
    tmp_lock = _new_locked_dir(tmp)
    try:
        write_manifest_exclusive(tmp, manifest)
        (tmp / "shards").mkdir()
        target = FeatureCache.open(tmp)
        writer = target.writer(**options)
        placed: dict[tuple[str, str], _Placed] = {}
        jobs = [(src, c, name) for src, c in zip(sources, caches) for name in sorted(c._index.shards)]
        for done, (src, c, shard) in enumerate(jobs, 1):
            entry = c._index.shards[shard]
            command = entry.command or c.manifest.get("command")
            # the merge's own handle, not the cache's LRU of open shards: opening the shards of
            # the first copies of duplicates must never close this one under the loop
            with _open_source(c.path / SHARDS_DIR / shard, src) as f:
                _check_fingerprint(f, c, src)
                for item_id in entry.ids:
                    _merge_item(writer, summary, placed, f, src, c, entry.family, item_id, command)
            if progress is not None:
                progress(done, len(jobs))
        writer.close()
        target.close()
        _move_into_place(tmp, out)
    except BaseException:
        if writer is not None:
            writer.abort()
        if target is not None:
            target.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(tmp_lock)
    return summary
