"""r2.cache: the on-disk feature cache (sharded HDF5). Imports numpy, h5py and the standard
library only.

CLIP runs once per video; everything after reads this cache. A cache is a directory::

    manifest.json      what the features are (model, layers, fps, preprocessing, dtype, ...)
    shards/*.h5        videos and queries, in separate shard families, committed atomically
    locks/, index.json writer locks and an optional (validated) index sidecar

Writing (extraction; ``create`` is called on every run, it reopens a compatible cache)::

    cache = FeatureCache.create("cache/", {"model_id": "openai/clip-vit-base-patch32",
                                           "model_config_hash": "...", "layers": [9, 10, 11, 12],
                                           "fps": 0.5, "preprocessing": {...}})
    with cache.writer() as w:
        for vid, feats in ...:                      # feats (T, K, N, D)
            if not cache.has_video(vid):
                w.add_video(vid, feats, source=path, duration=dur)
        w.add_query("q1", qfeats, mask, text="a man opens a door")   # (K, S, Dt), (S,)

Reading (training, prediction)::

    cache = FeatureCache.open("cache/")
    x = cache.load_video(vid, layers=[11, 12])     # (T, 2, N, D) float32
    q, mask = cache.load_query("q1")               # (K, S, Dt) float32, (S,) bool

Modules: ``manifest`` (keys, compatibility), ``shards`` (file names, HDF5 layout, id
encoding, writer locks), ``index`` (id -> shard), ``reader`` (:class:`FeatureCache`),
``writer`` (:class:`CacheWriter`, atomic commits), ``quantize`` (int8, measured error),
``verify`` (:func:`verify`, :func:`restore_manifest`), ``merge`` (:func:`merge`), ``locking`` (the ``flock`` helpers of
the writer locks and of ``merge``). The ``r2 cache`` command
(``info``, ``verify``, ``merge``, ``restore-manifest``) calls these functions.
"""

from .errors import CacheError, CacheWarning, MissingItemError, NoSpaceError, ShardDiscardedError
from .manifest import COMPAT_FIELDS, FORMAT_VERSION, default_layers, same_weights
from .merge import MergeSummary, merge
from .quantize import dequantize_int8, quantize_int8
from .reader import CacheInfo, FeatureCache, QueryFeatures, SentenceMismatch
from .shards import decode_id, encode_id
from .verify import RestoredManifest, VerifyReport, restore_manifest, verify
from .writer import CacheWriter

__all__ = [
    "FeatureCache", "CacheInfo", "QueryFeatures", "SentenceMismatch", "CacheWriter", "CacheError", "CacheWarning", "MissingItemError", "NoSpaceError",
    "ShardDiscardedError",
    "verify", "VerifyReport", "restore_manifest", "RestoredManifest", "merge", "MergeSummary", "quantize_int8", "dequantize_int8",
    "encode_id", "decode_id", "FORMAT_VERSION", "COMPAT_FIELDS", "default_layers", "same_weights",
]
