"""``manifest.json``: what a cache holds and how it was made.

Keys supplied by the caller of :meth:`FeatureCache.create`:

==================== ======================================================================
``model_id``          str: hub id or local directory of the CLIP model
``model_weights_hash`` optional str: hash of the model's weight files, its identity wherever
                      its folder lies (``r2 extract`` records it)
``model_config_hash`` str: hash of the model configuration
``layers``            list of int, ascending, unique: the hidden-state indices kept
                      (e.g. ``[9, 10, 11, 12]``); ``load_*(layers=...)`` takes these ids
``query_layers``      optional list of int, one per ``layers`` entry: the text tower's
                      hidden state stored with each kept layer (absent = ``layers``; differs
                      when the towers differ in depth, e.g. ViT-L/14: vision 21-24 with text
                      9-12, the same distance from the top). Query features are stored and
                      selected by the ``layers`` ids.
``fps``               float, or ``None`` when the sampling is per video (YouTube Highlights)
``preprocessing``     dict (size, crop, interpolation, mean, std, ...)
``dtype``             ``"float16"`` (default), ``"float32"`` or ``"int8"`` (per-token scale)
``precision``         optional str: the compute precision of the model (``"fp32"`` when absent,
                      ``"bf16"``, ``"fp16"``)
``token_form``        optional str, e.g. "residual stream before post-LN, CLS + patch tokens"
``sampling``          optional str: how clips are sampled from a video
``tokens_per_frame``  optional int: N of the video features (CLS + patches)
``video_width``       optional int: D of the video features
``query_width``       optional int: Dt of the query features
``command``           optional str: the extract command line of the run that created the
                      cache (each shard also records the command of the run that wrote it:
                      ``verify`` quotes that one in its rebuild advice)
==================== ======================================================================

The cache adds ``format_version``, ``r2_version`` and ``created`` (UTC, ISO 8601). Unknown
extra keys are kept as given (they must be JSON-serialisable). ``tokens_per_frame``,
``video_width`` and ``query_width`` are *pinned*: when the caller does not give them, the
first item written records them (:func:`pin_manifest`), and every later item must match.

Two manifests are *compatible* (same features, safe to mix in one cache or merge) when the
fields that say what the features mean are equal (:data:`COMPAT_FIELDS`): ``format_version``,
``model_id`` (or, when both manifests have it, ``model_weights_hash`` instead: the same weights
in folders at other paths, or on other machines, are the same model), ``model_config_hash``, ``layers``, ``query_layers`` (absent = ``layers``),
``fps``, ``dtype``, ``preprocessing``, ``precision`` (absent = ``"fp32"``), ``token_form`` and ``sampling`` (absent = absent), and
the pinned shapes ``tokens_per_frame``, ``video_width`` and ``query_width`` when both
manifests have them. The other keys (``command``, ...) are informative. Each shard records
:func:`manifest_fingerprint` of the manifest it was written under (a hash of these fields,
pinned shapes excepted), which ``verify`` compares with the manifest's.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path

from r2.fileio import atomic_write, fsync_dir, temporary_sibling

from .errors import CacheError
from .shards import LOCKS_DIR, SHARDS_DIR

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float16", "float32", "int8")
PINNED_FIELDS = ("tokens_per_frame", "video_width", "query_width")  # compared when both have them
COMPAT_FIELDS = ("format_version", "model_id", "model_weights_hash", "model_config_hash", "layers", "query_layers",
                 "fps", "dtype", "preprocessing", "precision", "token_form", "sampling") + PINNED_FIELDS
DEFAULTS = {"dtype": "float16", "precision": "fp32"}  # the value of an absent field
REQUIRED = ("model_id", "model_config_hash", "layers", "fps", "preprocessing")
ADDED_BY_CACHE = ("format_version", "r2_version", "created")


def default_layers(num_hidden_layers: int, k: int = 4) -> list[int]:
    """The ``layers`` a cache keeps unless told otherwise (``r2 extract`` without ``--layers``):
    the last ``k`` hidden-state indices of a tower of ``num_hidden_layers`` layers (9, 10, 11, 12
    for 12 layers; index 0 is the embeddings)."""
    if not 1 <= k <= num_hidden_layers + 1:
        raise ValueError(f"k must be in 1..{num_hidden_layers + 1}, got {k}")
    return list(range(num_hidden_layers + 1 - k, num_hidden_layers + 1))


def r2_version() -> str:
    try:
        from r2 import __version__
    except Exception:  # pragma: no cover - r2 is always importable when installed
        return "unknown"
    return __version__


def normalize_manifest(manifest: dict) -> dict:
    """Check the caller's manifest and return a normalised JSON-ready copy (``dtype``
    defaulted to ``"float16"``, ``layers`` as ints, ``fps`` as float or None).

    Raises :class:`CacheError` naming every missing or malformed key.
    """
    if not isinstance(manifest, dict):
        raise CacheError(f"the cache manifest must be a dict, got {type(manifest).__name__}")
    m = dict(manifest)
    m.setdefault("dtype", "float16")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise CacheError("the cache manifest lacks " + ", ".join(missing)
                         + " (see r2.cache.manifest for the keys and their meaning)")
    problems = []
    if not isinstance(m["model_id"], str) or not m["model_id"]:
        problems.append(f"model_id must be a non-empty str, got {m['model_id']!r}")
    if "model_weights_hash" in m and (not isinstance(m["model_weights_hash"], str) or not m["model_weights_hash"]):
        problems.append(f"model_weights_hash must be a non-empty str, got {m['model_weights_hash']!r}")
    if not isinstance(m["model_config_hash"], str) or not m["model_config_hash"]:
        problems.append(f"model_config_hash must be a non-empty str, got {m['model_config_hash']!r}")
    layers = _int_list(m["layers"])
    if not layers:
        problems.append(f"layers must be a non-empty list of int, got {m['layers']!r}")
    else:
        if any(x < 0 for x in layers) or layers != sorted(set(layers)):
            problems.append(f"layers must be ascending, unique and >= 0, got {layers!r}")
        m["layers"] = layers
        if m.get("query_layers") is not None:
            query_layers = _int_list(m["query_layers"])
            if query_layers is None or len(query_layers) != len(layers) or any(x < 0 for x in query_layers):
                problems.append(f"query_layers must be a list of {len(layers)} int >= 0 (one per layer), "
                                f"got {m['query_layers']!r}")
            else:
                m["query_layers"] = query_layers
    fps = m["fps"]
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            problems.append(f"fps must be a positive number or None (per-video sampling), got {fps!r}")
        else:
            m["fps"] = float(fps)
    if m["dtype"] not in DTYPES:
        problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {m['dtype']!r}")
    if not isinstance(m["preprocessing"], dict):
        problems.append(f"preprocessing must be a dict, got {type(m['preprocessing']).__name__}")
    for key in PINNED_FIELDS:
        v = m.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            problems.append(f"{key} must be a positive int, got {v!r}")
    for key in ("precision", "token_form", "sampling", "command"):
        v = m.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            problems.append(f"{key} must be a non-empty str, got {v!r}")
    if problems:
        raise CacheError("invalid cache manifest: " + "; ".join(problems))
    for key in ADDED_BY_CACHE:
        m.pop(key, None)
    try:
        return json.loads(json.dumps(m, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CacheError(f"the cache manifest must be JSON-serialisable: {exc}") from None


def _int_list(value) -> list[int] | None:
    """``value`` as a list of int when it is a sequence of whole numbers (not bools, not
    strings), else None."""
    if isinstance(value, (str, bytes, dict)):
        return None
    out = []
    try:
        for x in value:
            if isinstance(x, (bool, str, bytes)) or int(x) != x:
                return None
            out.append(int(x))
    except (TypeError, ValueError, OverflowError):
        return None
    return out


def new_manifest(manifest: dict) -> dict:
    """The full manifest of a new cache: the caller's keys plus the ones the cache adds."""
    m = normalize_manifest(manifest)
    return {"format_version": FORMAT_VERSION, "r2_version": r2_version(), "created": utc_now(), **m}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def same_weights(a, b) -> bool:
    """Whether the manifests (or feature specs) ``a`` and ``b`` both record a
    ``model_weights_hash`` and it is the same: then they name one model, under any ``model_id``
    (a folder at another path, on another machine)."""
    ha, hb = a.get("model_weights_hash"), b.get("model_weights_hash")
    return bool(ha and hb and ha == hb)


def differences(existing: dict, requested: dict) -> list[tuple[str, object, object]]:
    """``(field, existing value, requested value)`` for each compatibility field that differs
    (:data:`COMPAT_FIELDS`; an absent field has its :data:`DEFAULTS` value, a pinned shape is
    compared only when both manifests have it, and ``model_weights_hash`` replaces
    ``model_id`` when both have it)."""
    out = []
    for key in COMPAT_FIELDS:
        if key == "model_weights_hash" and not (existing.get(key) and requested.get(key)):
            continue  # compared when both manifests have it
        if key == "model_id" and same_weights(existing, requested):
            continue
        a, b = existing.get(key, DEFAULTS.get(key)), requested.get(key, DEFAULTS.get(key))
        if key == "query_layers":  # absent: the text layers are the vision layers
            a = existing.get(key) or existing.get("layers")
            b = requested.get(key) or requested.get("layers")
        if key in PINNED_FIELDS and (a is None or b is None):
            continue
        if key == "fps" and a is not None and b is not None:
            same = float(a) == float(b)
        else:
            same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        if not same:
            out.append((key, a, b))
    return out


def fingerprint_fields(manifest: dict) -> dict:
    """The fields :func:`manifest_fingerprint` hashes, normalised as :func:`differences`
    compares them: :data:`COMPAT_FIELDS` with absent fields at their :data:`DEFAULTS`,
    ``query_layers`` defaulting to ``layers``, ``fps`` as a float, and the model named by
    ``model_weights_hash`` when the manifest has one (else by ``model_id``, so copies of one
    model at other paths agree). The pinned shapes are left out: they are pinned by the first
    item, after shards may have started, and ``verify`` checks them on the data."""
    fields = {}
    for key in COMPAT_FIELDS:
        if key in PINNED_FIELDS:
            continue
        fields[key] = manifest.get(key, DEFAULTS.get(key))
    if fields.get("model_weights_hash"):
        fields.pop("model_id")
    else:
        fields.pop("model_weights_hash")
    if not fields.get("query_layers"):
        fields["query_layers"] = fields.get("layers")
    fps = fields.get("fps")
    if isinstance(fps, (int, float)) and not isinstance(fps, bool):
        fields["fps"] = float(fps)
    return fields


def fingerprint_text(fields: dict) -> str:
    """The canonical JSON of :func:`fingerprint_fields` that the fingerprint hashes (each
    shard stores it beside the fingerprint, so ``verify`` can say which field changed)."""
    return json.dumps(fields, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)


def manifest_fingerprint(manifest: dict) -> str:
    """``"sha256:<hex>"`` of :func:`fingerprint_text` of the manifest's
    :func:`fingerprint_fields`: what the features mean.

    Each shard records the fingerprint of the manifest it was written under; ``verify``
    reports a shard whose fingerprint differs from the current manifest's (an edited
    ``manifest.json``, or a shard copied in from a cache with other settings)."""
    return text_fingerprint(fingerprint_text(fingerprint_fields(manifest)))


def text_fingerprint(text: str) -> str:
    """``"sha256:<hex>"`` of a :func:`fingerprint_text`."""
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def describe_differences(diffs, first="the cache has", second="requested") -> str:
    return "\n".join(f"  {k}: {first} {json.dumps(a)}, {second} {json.dumps(b)}" for k, a, b in diffs)


def load_manifest(root: str | os.PathLike) -> dict:
    """``root/manifest.json`` as stored, checked only as far as telling a cache from other
    things (the directory, the JSON, the format version); :func:`read_manifest` checks the
    keys too. ``verify`` uses this one so that it can report a damaged manifest."""
    root = Path(root)
    if not root.exists():
        raise CacheError(f"no feature cache at {root}: the directory does not exist")
    if not root.is_dir():
        raise CacheError(f"{root} is not a feature cache: it is a file, not a directory")
    path = root / MANIFEST_NAME
    if not path.is_file():
        shards = root / SHARDS_DIR
        if shards.is_dir() and any(p.suffix == ".h5" for p in shards.iterdir()):
            raise CacheError(f"{root} has shards but no {MANIFEST_NAME}: it was deleted or lost; its shards record "
                             f"the settings they were written under: `r2 cache restore-manifest {root}` writes it again")
        raise CacheError(f"{root} is not an r2 feature cache (it has no {MANIFEST_NAME}); "
                         "create one with `r2 extract ... --out DIR`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read {path}: {exc}") from None
    if not isinstance(m, dict) or "format_version" not in m:
        raise CacheError(f"{path} is not an r2 cache manifest (no format_version)")
    version = m["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CacheError(f"{path} is damaged: format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise CacheError(f"{root} has cache format {version!r}; this r2 "
                         f"({r2_version()}) reads format {FORMAT_VERSION} and older: upgrade r2")
    return m


def read_manifest(root: str | os.PathLike) -> dict:
    """Read and check ``root/manifest.json``; a clear :class:`CacheError` when ``root`` is
    missing, is not a cache, or holds a damaged (a key missing or malformed) or too new
    manifest. Returns the manifest as stored."""
    m = load_manifest(root)
    try:
        normalize_manifest({k: v for k, v in m.items() if k not in ADDED_BY_CACHE})
    except CacheError as exc:
        raise CacheError(f"{Path(root) / MANIFEST_NAME} is damaged: {exc}; repair it, or delete "
                         "the cache and extract again") from None
    return m


@contextlib.contextmanager
def _manifest_mutex(root: Path):
    """An exclusive ``flock`` on ``root/locks/manifest.mutex`` (not a ``*.lock`` writer lock):
    serialises updates of the manifest between processes."""
    import fcntl

    path = root / LOCKS_DIR / "manifest.mutex"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pin_manifest(root: str | os.PathLike, values: dict) -> dict:
    """Record ``values`` (pinned shapes, e.g. ``{"video_width": 768}``) in
    ``root/manifest.json`` for each key the manifest does not have yet, atomically and under
    an inter-process lock (the first writer wins). Returns the manifest as it is now; the
    caller compares its values with the ones it asked for."""
    root = Path(root)
    with _manifest_mutex(root):
        m = read_manifest(root)
        missing = {k: v for k, v in values.items() if m.get(k) is None}
        if missing:
            m.update(missing)
            atomic_write(root / MANIFEST_NAME, _encode(m))
    return m


def _encode(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest_exclusive(root: Path, manifest: dict) -> bool:
    """Write ``root/manifest.json`` only if it does not exist yet, atomically (a complete,
    fsynced temporary file, then a hard link that fails when another process got there
    first). Returns True when this call wrote it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / MANIFEST_NAME
    tmp = atomic_write(temporary_sibling(final), _encode(manifest))
    try:
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError:  # file system without hard links: claim the name, then move the file in
            try:
                os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                return False
            os.replace(tmp, final)
        fsync_dir(root)
        return True
    finally:
        tmp.unlink(missing_ok=True)
