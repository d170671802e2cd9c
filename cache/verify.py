"""``verify``: check every shard of a cache, name the damaged ones, say how to rebuild.

Checks: the manifest (keys, types, format version); every committed shard opens (a
truncated file, or one whose HDF5 structure is damaged, does not); each shard was written
under the manifest's compatibility fields (its ``manifest_fingerprint`` attribute, see
:func:`r2.cache.manifest.manifest_fingerprint`: an edited ``manifest.json`` or a shard copied
in from a cache with other settings is reported, with the fields that differ from the ones
the shard recorded, ``manifest_fields``; shards of an older r2 have no fingerprint, which is a
note, not a problem); each item has every layer of the manifest with the stored
dtype and consistent shapes; every item has the cache's pinned shapes (N and D of the videos,
Dt of the queries: the manifest's, else those of the first item); an id present in two shards
has the same data in both (same dataset checksums; identical copies are a warning, different
data a problem); and, unless ``quick``, the crc32 of the whole file equals the one recorded in
its name at commit (a flipped byte anywhere is found), and every dataset's data equal its own
crc32 attribute. When the file crc differs, every dataset is also checked for finite values
(int8 scales >= 0, masks 0/1), in a child process, to name the items hit; when it matches,
the datasets are read back from the page cache for their crc32s only (the writer checked the
values). (A shard without a recorded crc gets all the dataset checks.) So a full check reads
each file from disk once, sequentially. Partial shards (a running writer's, or one left by a
killed writer) are a warning, not an error.

A damaged shard is rebuilt by deleting it and rerunning the command that wrote it (``r2
extract`` or ``r2 cache import``: the shard's own ``command`` attribute, else the index
sidecar's note of it, else the manifest's ``command``), with ``--out`` pointing at this
cache: it re-extracts (re-imports) what is missing.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .index import ShardIndex
from .manifest import (ADDED_BY_CACHE, fingerprint_fields, fingerprint_text, load_manifest, manifest_fingerprint,
                       new_manifest, normalize_manifest, text_fingerprint, write_manifest_exclusive)
from .errors import CacheError
from .fastio import all_finite
from .shards import (FAMILY_WORD, FINGERPRINT_ATTR, FINGERPRINT_FIELDS_ATTR, PARTIAL_SUFFIX, PINNED_AXES,
                     SHARDS_DIR, SPILL_SUFFIX, attrs_from_group, crc32,
                     decode_id, describe_pinned, encode_id, file_crc32, get_text_attr, layer_name,
                     list_partials, list_shards, open_h5, parse_shard_name, scale_name)

_STORED = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "int8": np.dtype("i1")}
_MAX_MESSAGES = 5


@dataclass
class ShardProblem:
    shard: str  # path of the shard file
    messages: list
    videos: list = field(default_factory=list)  # ids known to be in it (when readable)
    queries: list = field(default_factory=list)
    command: str | None = None  # the command that wrote the shard, when recorded


@dataclass
class ShardCheck:
    """What :func:`_check_shard` found in one shard (JSON-able: it may run in a child)."""

    messages: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    command: str | None = None  # the shard's ``command`` attribute
    items: dict = field(default_factory=dict)  # id -> {dataset: [dtype, shape, crc32 or None]}
    fingerprint: str | None = None  # the manifest fingerprint it was written under (None: not recorded)
    fingerprint_fields: str | None = None  # the fields that fingerprint hashes (None: not recorded)


@dataclass
class VerifyReport:
    path: str
    shards_checked: int = 0
    videos_checked: int = 0
    queries_checked: int = 0
    quick: bool = False
    cache_problems: list = field(default_factory=list)  # not tied to one shard
    problems: list = field(default_factory=list)  # ShardProblem
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # worth knowing, not wrong
    commands: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.cache_problems

    def rebuild_advice(self) -> str:
        """How to rebuild the damaged shards: delete them, then rerun the command that wrote
        each (its own, else the manifest's), with ``--out`` pointing at this cache."""
        if not self.problems:
            return ""
        paths = " ".join(shlex.quote(p.shard) for p in self.problems)
        lines = ["To rebuild: delete the damaged shard(s),", f"  rm {paths}"]
        commands, unknown = [], False
        for p in self.problems:
            for c in [p.command] if p.command else self.commands:
                c = with_out(c, self.path)
                if c not in commands:
                    commands.append(c)
            unknown = unknown or not (p.command or self.commands)
        if len(commands) == 1 and not unknown:
            lines += ["then rerun the command that wrote them; it keeps what is there and "
                      "re-extracts (or re-imports) what is missing:", f"  {commands[0]}"]
        elif commands:
            lines += ["then rerun the commands that wrote them (each keeps what is there and "
                      "re-extracts, or re-imports, what is missing):"] + [f"  {c}" for c in commands]
        if unknown or not commands:
            lines += [("then" if not commands else "and, for the shards whose command is not recorded,")
                      + " rerun the `r2 extract` command that built this cache (same inputs, --out "
                      f"{shlex.quote(self.path)}); it re-extracts what is missing."]
        return "\n".join(lines)

    def format(self) -> str:
        what = "quick check (no data read)" if self.quick else "full check"
        lines = [f"{self.path}: {self.shards_checked} shards, {self.videos_checked} videos, "
                 f"{self.queries_checked} queries ({what})"]
        for msg in self.cache_problems:
            lines.append(f"PROBLEM {msg}")
        for p in self.problems:
            held = []
            if p.videos:
                held.append(f"{len(p.videos)} video" + ("s" if len(p.videos) > 1 else ""))
            if p.queries:
                held.append(f"{len(p.queries)} quer" + ("ies" if len(p.queries) > 1 else "y"))
            lines.append(f"DAMAGED {p.shard}" + (f" (holds {', '.join(held)})" if held else ""))
            lines += [f"    {m}" for m in p.messages]
        for w in self.warnings:
            lines.append(f"warning: {w}")
        for n in self.notes:
            lines.append(f"note: {n}")
        if self.ok:
            lines.append("OK: every shard is readable and consistent with the manifest")
        else:
            n = len(self.problems)
            lines.append(f"FAILED: {n} damaged shard(s), {len(self.cache_problems)} other problem(s)")
            advice = self.rebuild_advice()
            if advice:
                lines.append(advice)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["rebuild_advice"] = self.rebuild_advice()
        return d


def with_out(command: str, path: str) -> str:
    """``command`` with its ``--out`` (``--out=``; ``-o`` of ``r2 extract`` and ``r2 cache
    import``) value replaced by ``path``; unchanged when it has none or does not parse."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    flags = ("--out", "-o") if argv[:2] == ["r2", "extract"] or argv[:3] == ["r2", "cache", "import"] else ("--out",)
    for i, arg in enumerate(argv):
        if arg in flags and i + 1 < len(argv):
            argv[i + 1] = path
            return shlex.join(argv)
        if arg.startswith("--out="):
            argv[i] = f"--out={path}"
            return shlex.join(argv)
    return command


def verify(path, *, quick: bool = False, progress=None) -> VerifyReport:
    """Check the cache at ``path``; returns a :class:`VerifyReport` (``report.ok``,
    ``report.format()``). ``quick`` checks structure only (no data read, no checksum).
    ``progress(done, total)`` is called after each shard. A missing directory or manifest
    raises :class:`CacheError`."""
    root = Path(path)
    manifest = load_manifest(root)  # as stored: a damaged manifest is reported, not raised
    report = VerifyReport(path=str(root.resolve()), quick=quick)
    try:
        normalize_manifest({k: v for k, v in manifest.items() if k not in ADDED_BY_CACHE})
    except CacheError as exc:
        report.cache_problems.append(f"manifest.json: {exc}")
    cmd = manifest.get("command")
    commands = [cmd] if cmd else manifest.get("source_commands") or []
    report.commands = [c for c in commands if isinstance(c, str) and c] if isinstance(commands, list) else []
    layers, dtype = manifest.get("layers"), manifest.get("dtype", "float16")
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
            or not isinstance(dtype, str) or dtype not in _STORED):
        report.cache_problems.append("manifest.json: cannot check shards without valid layers and dtype")
        return report

    known = ShardIndex._read_sidecar(root)  # names the items of shards that no longer open
    stats = list_shards(root)
    seen: dict[tuple[str, str], tuple[str, dict | None]] = {}  # (family, id) -> (shard, datasets)
    pinned = {}  # pinned key -> (value, where it comes from)
    for family, pins in PINNED_AXES.items():
        for key, _ in pins:
            v = manifest.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                pinned[key] = (v, f"the manifest says {key} = {v}")
    fingerprint = manifest_fingerprint(manifest)
    unfingerprinted, foreign = 0, {}  # shards without a fingerprint; fingerprint -> shards
    foreign_fields = {}  # fingerprint -> the fields it differs in, in words ("" when not recorded)
    for i, name in enumerate(sorted(stats)):
        parsed = parse_shard_name(name)
        family, path = parsed.family, root / SHARDS_DIR / name
        file_msg, intact = None, False
        if not quick and parsed.crc is not None:
            actual = file_crc32(path)
            if actual != parsed.crc:  # damaged: read every dataset to say which items are hit
                file_msg = (f"file checksum mismatch (crc32 {actual:08x}, {parsed.crc:08x} when "
                            "committed): the file changed after it was written")
            else:  # byte-identical to what the writer committed
                intact = True
        if file_msg or (parsed.crc is None and not quick):
            # a damaged file can make HDF5 itself hang or crash: diagnose it in a child process
            check = _check_shard_isolated(path, family, layers, dtype, False)
        else:
            # intact: HDF5 can read it safely here. The datasets' own crc32s are still checked
            # (the file was just read, so from the page cache): a shard that a writer copied
            # from a damaged one (an older merge) has a matching file crc but data that do not
            # match their crc32 attributes
            check = _check_shard(path, family, layers, dtype, quick, crc_only=intact)
        messages, ids = check.messages, check.ids
        if file_msg:
            messages.append(file_msg)
        if check.fingerprint is None:
            unfingerprinted += 0 if messages else 1  # (a damaged shard is reported anyway)
        elif check.fingerprint != fingerprint:
            foreign.setdefault(check.fingerprint, []).append(name)
            changed = _changed_fields(check, manifest)
            foreign_fields[check.fingerprint] = changed
            what = (changed or f"fingerprint {check.fingerprint}, manifest.json now gives {fingerprint}")
            _note(messages, f"written under other manifest settings ({what}): manifest.json was edited after "
                            "this shard was written, or the shard was copied in from a cache made with "
                            "another model, layers, fps, preprocessing, dtype or precision")
        report.shards_checked += 1
        if family == "videos":
            report.videos_checked += len(ids)
        else:
            report.queries_checked += len(ids)
        word = FAMILY_WORD[family]
        for item_id in ids:
            datasets = check.items.get(item_id)
            first = seen.setdefault((family, item_id), (name, datasets))
            if first[0] != name:
                if datasets is None or first[1] is None:  # one copy is unreadable: reported above
                    report.warnings.append(f"{word} {item_id!r} is in two shards ({first[0]}, {name}); "
                                           f"reads use {first[0]}")
                elif datasets == first[1]:
                    report.warnings.append(f"{word} {item_id!r} is in two shards ({first[0]}, {name}) "
                                           f"with identical data; reads use {first[0]}")
                else:
                    report.cache_problems.append(
                        f"{word} {item_id!r} is in two shards with different data ({first[0]}, {name}); "
                        f"reads use {first[0]}: delete the shard that holds the wrong one and rerun "
                        "the extract command that wrote it")
            shape = (datasets or {}).get(layer_name(layers[0]), [None, []])[1]
            for key, axis in PINNED_AXES[family]:
                if axis >= len(shape):
                    continue
                value = shape[axis]
                ref = pinned.setdefault(key, (value, f"{word} {item_id!r} (in {name}) has {value}"))
                if value != ref[0]:
                    _note(messages, f"{word} {item_id!r}: {describe_pinned(key, value)}, {ref[1]} "
                                    "(one cache holds the features of one model)")
        if messages:
            if not ids and name in known:
                ids = known[name].ids
            # a shard of other settings: its own command writes those, which this cache refuses
            other_settings = check.fingerprint is not None and check.fingerprint != fingerprint
            command = None if other_settings else check.command or (known[name].command if name in known else None)
            report.problems.append(ShardProblem(
                str(root.resolve() / SHARDS_DIR / name), messages,
                videos=list(ids) if family == "videos" else [],
                queries=list(ids) if family == "queries" else [], command=command))
        if progress is not None:
            progress(i + 1, len(stats))
    if foreign and sum(map(len, foreign.values())) == report.shards_checked and len(foreign) == 1:
        [changed] = foreign_fields.values()
        report.cache_problems.append(
            "no shard was written under the compatibility fields (model, layers, fps, preprocessing, "
            "dtype, precision, ...) that manifest.json has now: it was probably edited; restore its "
            "original values" + (f" ({changed})" if changed else "") + " (or re-extract into a new cache)")
    if unfingerprinted:
        report.notes.append(f"{unfingerprinted} shard(s) have no manifest fingerprint (written by an older r2): "
                            "edits of manifest.json cannot be detected for them")
    strangers = sorted(p.name for p in (root / SHARDS_DIR).iterdir()
                       if parse_shard_name(p.name) is None and not p.name.endswith((PARTIAL_SUFFIX, SPILL_SUFFIX))
                       ) if (root / SHARDS_DIR).is_dir() else []
    if strangers:
        report.warnings.append(
            f"{len(strangers)} file(s) in {root / SHARDS_DIR} are not named as shards, so readers ignore "
            f"them and they were not checked (a shard renamed by hand, or another program's file): "
            + ", ".join(strangers[:5]) + (f" (and {len(strangers) - 5} more)" if len(strangers) > 5 else ""))
    partials = list_partials(root)
    if partials:
        report.warnings.append(
            f"{len(partials)} partial shard(s) in {root / SHARDS_DIR} (a writer is running, or one "
            "was stopped before committing them; they are ignored, and the next writer removes "
            "those of stopped writers): " + ", ".join(p.name for p in partials))
    if not stats:
        report.warnings.append("the cache holds no shards yet")
    return report


def _changed_fields(check: ShardCheck, manifest: dict) -> str:
    """The compatibility fields in which the manifest a shard was written under differs from
    ``manifest``, in words (``"layers: [9, 10, 11, 12] when written, manifest.json now gives
    [10, 11, 12]"``), from the shard's recorded fields; ``""`` when it recorded none (an older
    r2) or they do not hash to its fingerprint."""
    text = check.fingerprint_fields
    if text is None or not text.isascii() or text_fingerprint(text) != check.fingerprint:
        return ""
    try:
        then = json.loads(text)
    except ValueError:
        return ""
    now = json.loads(fingerprint_text(fingerprint_fields(manifest)))
    if not isinstance(then, dict):
        return ""
    return "; ".join(f"{key}: {json.dumps(then.get(key))} when written, manifest.json now gives "
                     f"{json.dumps(now.get(key))}"
                     for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key))


def _note(messages: list, msg: str) -> None:
    """Add a problem of a shard, at most ``_MAX_MESSAGES`` of them."""
    if len(messages) < _MAX_MESSAGES:
        messages.append(msg)
    elif len(messages) == _MAX_MESSAGES:
        messages.append("... (more problems not shown)")


def _check_shard_isolated(path: Path, family, layers, dtype, quick) -> ShardCheck:
    """``_check_shard`` in a child process with a time limit."""
    timeout = 60 + path.stat().st_size / 20e6
    payload = json.dumps({"path": str(path), "family": family, "layers": layers, "dtype": dtype,
                          "quick": quick})
    code = "from r2.cache.verify import _check_shard_main; _check_shard_main()"
    try:
        out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ShardCheck([f"reading its HDF5 structure did not finish in {timeout:.0f} s (damaged metadata)"])
    if out.returncode == 0:
        return ShardCheck(**json.loads(out.stdout))
    if "ModuleNotFoundError" in out.stderr:  # r2 not importable by a fresh interpreter
        return _check_shard(path, family, layers, dtype, quick)
    last = (out.stderr.strip().splitlines() or ["no message"])[-1]
    return ShardCheck([f"reading it crashed the checker (exit code {out.returncode}): {_short(last)}"])


def _check_shard_main():
    """Entry point of the child process of :func:`_check_shard_isolated` (JSON in and out)."""
    a = json.loads(sys.stdin.read())
    check = _check_shard(Path(a["path"]), a["family"], a["layers"], a["dtype"], a["quick"])
    sys.stdout.write(json.dumps(asdict(check)))


def _check_shard(path: Path, family: str, layers, dtype, quick, crc_only: bool = False) -> ShardCheck:
    """The problems, item ids, command, manifest fingerprint and dataset signatures of one
    shard (``quick``: no data read; ``crc_only``: of the data, only their crc32s are checked,
    for a file known to be byte-identical to the one committed, whose values the writer
    checked)."""
    check = ShardCheck()

    def problem(msg):
        _note(check.messages, msg)

    try:
        f = open_h5(path)
    except Exception as exc:
        return ShardCheck([f"cannot be opened (truncated or corrupt): {_short(exc)}"])
    try:
        with f:
            if get_text_attr(f, "family") not in (None, family):
                problem(f"shard attribute family={get_text_attr(f, 'family')!r}, its name says {family}")
            command = get_text_attr(f, "command")
            check.command = command if isinstance(command, str) and command else None
            fingerprint = get_text_attr(f, FINGERPRINT_ATTR)
            check.fingerprint = fingerprint if isinstance(fingerprint, str) else None
            fields = get_text_attr(f, FINGERPRINT_FIELDS_ATTR)
            check.fingerprint_fields = fields if isinstance(fields, str) else None
            other = [k for k in f.keys() if k != family]
            if other:
                problem(f"unexpected groups {other}")
            if family not in f:
                problem(f"no /{family} group")
                return check
            for name in f[family].keys():
                item_id = decode_id(name)
                if encode_id(item_id) != name:
                    problem(f"item name {name!r} is not a valid encoded id")
                    continue
                check.ids.append(item_id)
                try:
                    group = f[family][name]
                    check.items[item_id] = _signature(group)
                    for msg in _check_item(group, family, layers, dtype, quick, crc_only):
                        problem(f"{FAMILY_WORD[family]} {item_id!r}: {msg}")
                except Exception as exc:  # h5py errors on damaged structure
                    problem(f"{FAMILY_WORD[family]} {item_id!r}: unreadable: {_short(exc)}")
    except Exception as exc:
        problem(f"unreadable: {_short(exc)}")
    return check


def _signature(group) -> dict:
    """``{dataset: [dtype, shape, stored crc32 or None]}`` of an item: equal for two copies
    of the same data (metadata only, no data read)."""
    out = {}
    for name in sorted(group):
        ds = group[name]
        crc = ds.attrs.get("crc32")
        out[name] = [ds.dtype.str, list(ds.shape), None if crc is None else int(crc)]
    return out


def _check_item(group, family, layers, dtype, quick, crc_only=False):
    """The problems of one item group (empty: none): its attributes, datasets, dtypes and
    shapes; unless ``quick``, its data against their crc32 attributes and, unless
    ``crc_only``, for finite values (int8 scales >= 0, masks 0/1). Also used by ``merge``
    on every item it copies."""
    out = []
    try:
        attrs_from_group(group)
    except Exception as exc:
        out.append(f"attributes are not valid JSON ({_short(exc)})")
    ndim = 3 if family == "videos" else 2
    shape = None
    names = [(layer_name(l), _STORED[dtype]) for l in layers]
    if dtype == "int8":
        names += [(scale_name(l), np.dtype("<f4")) for l in layers]
    if family == "queries":
        names.append(("mask", np.dtype("u1")))
    for name, want in names:
        if name not in group:
            out.append(f"missing dataset {name}")
            continue
        ds = group[name]
        if ds.dtype != want:
            out.append(f"{name} has dtype {ds.dtype}, expected {want}")
            continue
        if name.startswith("L") and not name.endswith("_scale"):
            if ds.ndim != ndim:
                out.append(f"{name} has shape {ds.shape}, expected {ndim} dimensions")
                continue
            if shape is None:
                shape = ds.shape
            elif ds.shape != shape:
                out.append(f"{name} has shape {ds.shape}, other layers {shape}")
            if 0 in ds.shape:
                out.append(f"{name} is empty {ds.shape}")
        elif shape is not None:
            expected = shape[:-1] if name.endswith("_scale") else shape[:1]
            if ds.shape != expected:
                out.append(f"{name} has shape {ds.shape}, expected {expected}")
        if quick:
            continue
        stored = ds.attrs.get("crc32")
        running, bad = 0, set()
        for block in _row_blocks(ds):  # the data a block at a time: an hour's layer is not held whole
            running = crc32(block, running)
            if crc_only:
                continue
            if not all_finite(block):
                bad.add(f"{name} has NaN or infinite values")
            if name.endswith("_scale") and (block < 0).any():
                bad.add(f"{name} has negative scales")
            if name == "mask" and not np.isin(block, (0, 1)).all():
                bad.add("mask has values other than 0 and 1")
        if stored is None:
            out.append(f"{name} has no crc32 attribute")
        elif int(stored) != running:
            out.append(f"{name}: checksum mismatch (the data changed after it was written)")
            continue
        out.extend(sorted(bad))
    return out


_READ_BLOCK_BYTES = 8 * 2**20  # what _check_item reads of a dataset at a time


def _row_blocks(ds):
    """A dataset's data in blocks of whole rows (about 8 MiB each), in order: their running
    crc32 is the crc32 of the whole."""
    if ds.ndim == 0 or ds.shape[0] == 0:
        yield ds[()]
        return
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    rows = max(1, _READ_BLOCK_BYTES // row_bytes)
    for start in range(0, ds.shape[0], rows):
        yield ds[start:start + rows]


def _short(exc) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text


@dataclass
class RestoredManifest:
    """What :func:`restore_manifest` wrote: the manifest, the shards it was read from (all that
    record their settings, under one fingerprint) and those that recorded none or could not
    be read."""

    path: str  # the manifest.json written
    manifest: dict
    shards: int
    unreadable: list = field(default_factory=list)  # shard names that could not be read
    unrecorded: list = field(default_factory=list)  # shard names written by an r2 that recorded no settings


def restore_manifest(path) -> RestoredManifest:
    """Write the lost ``manifest.json`` of the cache at ``path`` again from its shards: each
    records the compatibility fields it was written under (``manifest_fields``, with their
    fingerprint) and the command that wrote it. The restored manifest has exactly those fields
    (so ``verify`` finds every shard written under it), the command most shards record, and, as
    ``model_id``, the ``--model`` of that command (a cache of a model known by its weights hash;
    else the recorded id). Raises :class:`CacheError` when the cache has a manifest, holds no
    shard recording its settings, or shards of several settings (a restore would have to choose
    between them)."""
    import collections

    root = Path(path)
    if (root / "manifest.json").exists():
        raise CacheError(f"{root} has a manifest.json: nothing to restore (`r2 cache verify {root}` checks it)")
    if not (root / SHARDS_DIR).is_dir():
        raise CacheError(f"{root} has no {SHARDS_DIR}/ folder: it is not a feature cache whose manifest was lost")
    by_fingerprint: dict[str, list[tuple[str, str, str | None]]] = {}
    unreadable, unrecorded = [], []
    for name in sorted(list_shards(root)):
        try:
            with open_h5(root / SHARDS_DIR / name) as f:
                fingerprint = get_text_attr(f, FINGERPRINT_ATTR)
                fields = get_text_attr(f, FINGERPRINT_FIELDS_ATTR)
                command = get_text_attr(f, "command")
        except Exception:  # a damaged shard: verify names it once the manifest is back
            unreadable.append(name)
            continue
        if (not isinstance(fields, str) or not isinstance(fingerprint, str) or not fields.isascii()
                or text_fingerprint(fields) != fingerprint):
            unrecorded.append(name)
            continue
        by_fingerprint.setdefault(fingerprint, []).append((name, fields, command if isinstance(command, str) else None))
    if not by_fingerprint:
        raise CacheError(f"no shard of {root} records the settings it was written under ({len(unrecorded)} written by "
                         f"an older r2, {len(unreadable)} unreadable): the manifest cannot be restored; extract into a "
                         "new cache")
    if len(by_fingerprint) > 1:
        counts = ", ".join(f"{len(v)} shard(s) like {v[0][0]}" for v in by_fingerprint.values())
        raise CacheError(f"the shards of {root} were written under {len(by_fingerprint)} different settings ({counts}): "
                         "a manifest holds one; move the shards of the others into a cache folder of their own first")
    [(fingerprint, shards)] = by_fingerprint.items()
    manifest = json.loads(shards[0][1])
    version = manifest.pop("format_version", None)
    commands = collections.Counter(c for _, _, c in shards if c)
    command = commands.most_common(1)[0][0] if commands else None
    if "model_id" not in manifest:  # the fields name a model by its weights hash alone
        manifest["model_id"] = _model_of(command) or f"model with weights {manifest.get('model_weights_hash')}"
    if command:
        manifest["command"] = command
    manifest = {k: v for k, v in manifest.items() if v is not None or k == "fps"}
    manifest.update(_pinned_shapes(root, [name for name, _, _ in shards], manifest["layers"][0]))
    restored = new_manifest(manifest)
    if version is not None:
        restored["format_version"] = version
    if manifest_fingerprint(restored) != fingerprint:  # fields this r2 does not read back the same
        raise CacheError(f"the settings recorded in {root}'s shards do not give a manifest of their fingerprint: "
                         "the manifest cannot be restored; extract into a new cache")
    if not write_manifest_exclusive(root, restored):
        raise CacheError(f"{root}: another process wrote a manifest.json meanwhile; nothing was restored")
    return RestoredManifest(str(root / "manifest.json"), restored, len(shards), unreadable, unrecorded)


def _pinned_shapes(root: Path, names, layer: int) -> dict:
    """The pinned shapes (:data:`PINNED_AXES`: N and D of the videos, Dt of the queries) of the
    first item of the first readable shard of each family among ``names``."""
    pinned = {}
    for family in PINNED_AXES:
        for name in names:
            if parse_shard_name(name).family != family:
                continue
            try:
                with open_h5(root / SHARDS_DIR / name) as f:
                    first = next(iter(f[family].values()), None)
                    shape = first[layer_name(layer)].shape if first is not None else None
            except Exception:
                continue
            if shape is not None:
                pinned.update({key: int(shape[axis]) for key, axis in PINNED_AXES[family] if axis < len(shape)})
                break
    return pinned


def _model_of(command: str | None) -> str | None:
    """The ``--model``/``-m`` value of a recorded ``r2 extract`` / ``r2 cache import`` command."""
    if not command:
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    for i, arg in enumerate(argv):
        if arg in ("--model", "-m") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


def manifest_edited(root, manifest: dict, sample: int = 2) -> str | None:
    """The fields in which ``manifest`` differs from the settings the cache's shards were
    written under (as :func:`_changed_fields` words them), when it differs from every one of
    the first and last ``sample`` committed shards that record a fingerprint: a hand-edited
    ``manifest.json``. None when one of them agrees (a single shard copied in from elsewhere is
    ``verify``'s to name), or none records a fingerprint (an older r2). Reads attributes only."""
    names = sorted(list_shards(Path(root)))
    names = names[:1] + names[-1:] if len(names) > 1 else names
    fingerprint, changed = manifest_fingerprint(manifest), None
    for name in names[:sample]:
        try:
            with open_h5(Path(root) / SHARDS_DIR / name) as f:
                check = ShardCheck(fingerprint=get_text_attr(f, FINGERPRINT_ATTR),
                                   fingerprint_fields=get_text_attr(f, FINGERPRINT_FIELDS_ATTR))
        except Exception:  # unreadable: verify names it
            continue
        if not isinstance(check.fingerprint, str):
            continue
        if check.fingerprint == fingerprint:
            return None
        changed = _changed_fields(check, manifest) or f"fingerprint {check.fingerprint}, manifest.json gives {fingerprint}"
    return changed
