"""int8 storage with a per-token symmetric scale.

Every token vector ``x`` (the last axis, D values) is stored as ``q = rint(x / s)`` in int8
(range -127..127) with one float32 scale ``s = max|x| / 127`` per token; reading gives
``q * s``. Storage is ``D + 4`` bytes per token instead of ``2 D`` for float16 (52 % of
float16 at D = 768). An all-zero token has ``s = 0`` and reads back as zeros.

Measured error (:func:`error_table`; ``python bench/cache_read.py --int8-only`` prints it),
on 75 x 50 tokens of D = 768 drawn from N(0, 1), some with a few outlier channels scaled by
a factor, the way CLIP's residual stream has a handful of large-magnitude channels:

===============================  =======  =========  ============  ===========  ==========
data                             storage  rel. err.  rel. err.     max abs err  min token
                                                     other chans                cosine
===============================  =======  =========  ============  ===========  ==========
N(0, 1)                          int8     0.0077     0.0077        0.020        0.99994
N(0, 1), 2 channels x 20         int8     0.041      0.058         0.30         0.9982
N(0, 1), 2 channels x 20         float16  0.00021    0.00021       0.027        1.0000
N(0, 1), 4 channels x 50         int8     0.048      0.178         0.79         0.9980
N(0, 1), 2 channels x 100        int8     0.056      0.290         1.47         0.9979
===============================  =======  =========  ============  ===========  ==========

``rel. err.`` is ``||x - x'|| / ||x||`` over the whole array, ``other chans`` the same over
the channels that are not outliers, ``max abs err`` the largest ``|x - x'|`` (half a
quantisation step of the token with the largest scale). The outlier channels set the scale
of every token, so the other channels lose precision as the outliers grow: about 6 % relative
error on them at 20x outliers, 18-29 % at 50-100x, against 0.02 % for float16. Token vectors
stay close in direction (cosine >= 0.998). Use int8 when disk space matters more than that
error; float16 is the default.
"""

from __future__ import annotations

import numpy as np

QMAX = 127


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x (..., D)`` float -> ``(q (..., D) int8, scale (...) float32)``, per-token symmetric."""
    x = np.asarray(x, dtype=np.float32)
    absmax = np.max(np.abs(x), axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    scale = (absmax / QMAX).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint(x / safe[..., None])
    np.clip(q, -QMAX, QMAX, out=q)
    return q.astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, dtype=np.float32, out=None) -> np.ndarray:
    """``q (..., D) int8`` and ``scale (...)`` -> ``q * scale`` in ``dtype`` (into ``out`` if given)."""
    if out is None:
        out = np.empty(q.shape, dtype=dtype)
    np.multiply(q, scale[..., None], out=out, casting="unsafe")
    return out


def int8_error(x: np.ndarray, outlier_channels=()) -> dict:
    """Round-trip error of int8 storage on ``x (..., D)`` (see :func:`roundtrip_error`)."""
    x = np.asarray(x, dtype=np.float32)
    return roundtrip_error(x, dequantize_int8(*quantize_int8(x)), outlier_channels)


def roundtrip_error(x: np.ndarray, y: np.ndarray, outlier_channels=()) -> dict:
    """``rel_error``: ``||x - y|| / ||x||`` over the whole array; ``rel_error_regular``: the
    same over the channels not in ``outlier_channels`` (what the outliers cost the others);
    ``max_abs_error``: the largest ``|x - y|``; ``min_token_cosine``: the smallest cosine
    similarity between a token of ``x`` and its round trip in ``y``."""
    d = x - y
    keep = np.ones(x.shape[-1], bool)
    keep[list(outlier_channels)] = False
    cos = np.sum(x * y, -1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-30)
    return {
        "rel_error": float(np.linalg.norm(d) / max(np.linalg.norm(x), 1e-30)),
        "rel_error_regular": float(np.linalg.norm(d[..., keep]) / max(np.linalg.norm(x[..., keep]), 1e-30)),
        "max_abs_error": float(np.abs(d).max()) if d.size else 0.0,
        "min_token_cosine": float(cos.min()) if cos.size else 1.0,
    }


def clip_like_features(shape=(75, 50, 768), outliers: int = 2, factor: float = 20.0,
                       seed: int = 0) -> np.ndarray:
    """Random N(0, 1) features whose first ``outliers`` channels are multiplied by ``factor``
    (a stand-in for the few large-magnitude channels of CLIP's residual stream; per-token
    quantisation does not depend on which channels they are)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x[..., :outliers] *= factor
    return x


def error_table(shape=(75, 50, 768), seed: int = 0) -> list[dict]:
    """The measurements quoted in this module's docstring: int8 on several outlier settings,
    and float16 for comparison."""
    rows = []
    for outliers, factor in ((0, 1.0), (2, 20.0), (4, 50.0), (2, 100.0)):
        x = clip_like_features(shape, outliers, factor, seed)
        label = "N(0, 1)" if not outliers else f"N(0, 1), {outliers} channels x {factor:g}"
        rows.append({"data": label, "storage": "int8", **int8_error(x, range(outliers))})
        if outliers == 2 and factor == 20.0:
            y = x.astype(np.float16).astype(np.float32)
            rows.append({"data": label, "storage": "float16", **roundtrip_error(x, y, range(outliers))})
    return rows
