"""``merge``: join caches with compatible manifests into a new one.

Every item is copied as it is stored (HDF5 object copy: no re-encoding, int8 scales and
checksums kept) into fresh shards of the output. An id present in more than one source (or
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

import glob
import os
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np

from .errors import CacheError, CacheWarning
from .locking import create_locked, lock_if_current
from .manifest import describe_differences, differences, r2_version, utc_now, write_manifest_exclusive
from .reader import FeatureCache
from .shards import encode_id


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


def merge(sources, out, *, progress=None, max_shard_bytes: int | None = None,
          max_shard_items: int | None = None) -> dict:
    """Merge the caches at ``sources`` into a new cache at ``out`` (which must not exist, or
    be an empty directory). Returns a summary dict (videos, queries, duplicates kept once,
    shards, bytes). ``progress(done, total)`` is called after each source shard.

    Raises :class:`CacheError` (nothing is left at ``out``) when a source is missing, has
    unreadable shards, its manifest is incompatible with the first source's, or an id is
    present twice with different data.
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
        summary = _merge(sources, caches, out, progress, options)
    finally:
        for c in caches:
            c.close()
    with FeatureCache.open(out) as result:
        info = result.info()
        summary.update(out=str(result.path), shards=info["shards"], bytes=info["bytes"])
    return summary


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
        placed: dict[tuple[str, str], tuple[FeatureCache, str]] = {}
        jobs = [(c, name) for c in caches for name in sorted(c._index.shards)]
        for done, (c, shard) in enumerate(jobs, 1):
            entry = c._index.shards[shard]
            family = entry.family
            command = entry.command or c.manifest.get("command")
            f = c._file(shard)
            for item_id in entry.ids:
                group = f[f"{family}/{encode_id(item_id)}"]
                where = placed.get((family, item_id))
                if where is None:
                    writer._copy(family, item_id, group, command)
                    placed[(family, item_id)] = (c, shard)
                    summary[family] += 1
                    continue
                other_cache, other_shard = where
                other = other_cache._file(other_shard)[f"{family}/{encode_id(item_id)}"]
                if not _same_data(other, group):
                    raise CacheError(
                        f"{family[:-1]} {item_id!r} is in {other_cache.path / 'shards' / other_shard} "
                        f"and in {c.path / 'shards' / shard} with different data; remove one of "
                        "them (delete its shard and re-extract) and merge again")
                summary["duplicates_identical"] += 1
            if progress is not None:
                progress(done, len(jobs))
        writer.close()
        target.close()
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
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
