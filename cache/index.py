"""The id -> shard index, derived from the shard files.

The index is built by listing ``DIR/shards/*.h5`` and reading the item names of each shard.
To keep opening a large cache cheap, the result is also kept in a sidecar file
``DIR/index.json``; an entry of it is used only when its shard still exists with the same
name, size and mtime (shards are immutable once committed), otherwise the shard is read
again. The sidecar carries a checksum of its contents: a damaged or edited one is ignored
and rebuilt from the shards. And should an entry still lie (a shard replaced by another of
the same name, size and mtime), the first read that misses an id in its shard reads that
shard's names again (:meth:`ShardIndex.rescan`). So the index never disagrees with the
shards: deleting a shard removes its items, a new shard adds them. The sidecar is written
atomically and is optional (a read-only cache works without it).

When the same id is in two shards (two writers extracted it, or shard folders were copied
together), the shard whose name sorts first wins; :attr:`ShardIndex.duplicates` lists them.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CacheWarning
from .shards import (FAMILIES, INDEX_NAME, SHARDS_DIR, get_text_attr, list_shards, open_h5,
                     parse_shard_name, read_ids)

INDEX_FORMAT = 2  # 2: entries carry the shard's command, the file carries a checksum


@dataclass
class ShardEntry:
    family: str
    size: int
    mtime_ns: int
    ids: list = field(default_factory=list)
    command: str | None = None  # the command line that wrote the shard, when recorded


class ShardIndex:
    def __init__(self):
        self.shards: dict[str, ShardEntry] = {}
        self.items: dict[str, dict[str, str]] = {f: {} for f in FAMILIES}
        self.bad: dict[str, str] = {}  # shard name -> why it could not be read
        self.duplicates: dict[tuple[str, str], list[str]] = {}  # (family, id) -> shard names
        self._sorted: dict[str, list[str] | None] = {f: None for f in FAMILIES}
        self._sidecar_loaded = False

    # ------------------------------------------------------------------ building
    def update(self, root: Path) -> bool:
        """Bring the index in line with the shard files. Returns True when anything changed."""
        root = Path(root)
        stats = list_shards(root)
        sidecar = {} if self._sidecar_loaded else self._read_sidecar(root)
        self._sidecar_loaded = True
        changed = False
        learned = False
        for name in list(self.shards):
            st = stats.get(name)
            e = self.shards[name]
            if st is None or st.st_size != e.size or st.st_mtime_ns != e.mtime_ns:
                del self.shards[name]
                changed = learned = True
        for name in list(self.bad):
            if name not in stats:
                del self.bad[name]
        for name, st in stats.items():
            if name in self.shards:
                continue
            e = sidecar.get(name)
            if e is not None and e.size == st.st_size and e.mtime_ns == st.st_mtime_ns:
                self.shards[name] = e
                changed = True
                continue
            entry = self._scan(root, name, st)
            if entry is not None:
                self.shards[name] = entry
                changed = learned = True
        if changed:
            self._rebuild()
        if learned or (sidecar and set(sidecar) != set(self.shards)):
            self.write_sidecar(root)
        return changed

    def add(self, name: str, entry: ShardEntry) -> None:
        """Record a shard that this process just committed (no need to read it back)."""
        self.shards[name] = entry
        self._rebuild()

    def rescan(self, root: Path, name: str) -> None:
        """Read the item names of shard ``name`` again (a read found the index wrong about
        it) and rewrite the sidecar."""
        root = Path(root)
        self.shards.pop(name, None)
        try:
            st = os.stat(root / SHARDS_DIR / name)
        except FileNotFoundError:
            entry = None
        else:
            entry = self._scan(root, name, st)
        if entry is not None:
            self.shards[name] = entry
        self._rebuild()
        self.write_sidecar(root)

    def _scan(self, root: Path, name: str, st) -> ShardEntry | None:
        family = parse_shard_name(name).family
        try:
            with open_h5(root / SHARDS_DIR / name) as f:
                ids = read_ids(f, family)
                command = get_text_attr(f, "command")
        except Exception as exc:  # truncated / corrupt: readers skip it, verify names it
            msg = f"{type(exc).__name__}: {exc}"
            if self.bad.get(name) != msg:
                warnings.warn(f"skipping unreadable shard {root / SHARDS_DIR / name} ({msg}); "
                              f"run `r2 cache verify {root}`", CacheWarning, stacklevel=4)
            self.bad[name] = msg
            return None
        self.bad.pop(name, None)
        return ShardEntry(family, st.st_size, st.st_mtime_ns, ids, command if isinstance(command, str) else None)

    def _rebuild(self) -> None:
        items = {f: {} for f in FAMILIES}
        dups: dict[tuple[str, str], list[str]] = {}
        for name in sorted(self.shards):
            e = self.shards[name]
            table = items[e.family]
            for item_id in e.ids:
                first = table.setdefault(item_id, name)
                if first != name:
                    dups.setdefault((e.family, item_id), [first]).append(name)
        self.items = items
        self.duplicates = dups
        self._sorted = {f: None for f in FAMILIES}

    # ------------------------------------------------------------------ queries
    def shard_of(self, family: str, item_id: str) -> str | None:
        return self.items[family].get(item_id)

    def ids(self, family: str) -> list[str]:
        if self._sorted[family] is None:
            self._sorted[family] = sorted(self.items[family])
        return list(self._sorted[family])

    # ------------------------------------------------------------------ sidecar
    @staticmethod
    def _checksum(shards: dict) -> str:
        return f"{zlib.crc32(json.dumps(shards, sort_keys=True, ensure_ascii=True).encode()):08x}"

    @staticmethod
    def _read_sidecar(root: Path) -> dict[str, ShardEntry]:
        try:
            data = json.loads((root / INDEX_NAME).read_text(encoding="utf-8"))
            if data.get("format") != INDEX_FORMAT or data.get("checksum") != ShardIndex._checksum(data["shards"]):
                return {}  # older format, damaged or edited: rebuilt from the shards
            return {name: ShardEntry(e["family"], int(e["size"]), int(e["mtime_ns"]), list(e["ids"]),
                                     e.get("command"))
                    for name, e in data["shards"].items()
                    if parse_shard_name(name) and e["family"] in FAMILIES}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # missing or damaged: rebuilt from the shards

    def write_sidecar(self, root: Path) -> None:
        shards = {n: {"family": e.family, "size": e.size, "mtime_ns": e.mtime_ns, "ids": e.ids,
                      "command": e.command}
                  for n, e in sorted(self.shards.items())}
        data = {"format": INDEX_FORMAT,
                "note": "cache of the shard contents; validated by name, size and mtime on open",
                "checksum": self._checksum(shards), "shards": shards}
        tmp = Path(root) / f".{INDEX_NAME}.{secrets.token_hex(6)}.tmp"
        try:
            tmp.write_text(json.dumps(data, ensure_ascii=True), encoding="utf-8")
            os.replace(tmp, Path(root) / INDEX_NAME)
        except OSError:  # read-only cache: the sidecar is only a speed-up
            try:
                tmp.unlink()
            except OSError:
                pass
