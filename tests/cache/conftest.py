"""Fixtures of the feature-cache tests: small real HDF5 caches built on the fly."""

import numpy as np
import pytest

from r2.cache import FeatureCache

LAYERS = [9, 10, 11, 12]


def flip_byte(path, pos, mask):
    """Damage a file in place: XOR the byte at ``pos`` with ``mask``."""
    with open(path, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ mask]))


def manifest(**changes):
    m = {"model_id": "test/tiny-clip", "model_config_hash": "cfg-0001", "layers": LAYERS,
         "fps": 0.5, "preprocessing": {"size": 224, "crop": "center", "mean": [0.48, 0.46, 0.41]},
         "dtype": "float16", "token_form": "residual stream, CLS + patch tokens",
         "video_width": 16, "query_width": 8, "command": "r2 extract videos/ --out cache/"}
    m.update(changes)
    return m


def video(seed, t=5, k=len(LAYERS), n=3, d=16):
    return np.random.default_rng(seed).standard_normal((t, k, n, d)).astype(np.float32)


def query(seed, s=6, k=len(LAYERS), d=8):
    rng = np.random.default_rng(1000 + seed)
    mask = np.arange(s) < (s - seed % 3)
    return rng.standard_normal((k, s, d)).astype(np.float32), mask


@pytest.fixture
def make_manifest():
    return manifest


@pytest.fixture
def features():
    """(video(seed, ...), query(seed, ...)) makers of deterministic random features."""
    return video, query


@pytest.fixture
def build_cache(tmp_path):
    """build_cache(name, videos={id: seed}, queries={id: seed}, **manifest changes)."""

    def build(name="cache", videos=(), queries=(), writer_options=None, **changes):
        cache = FeatureCache.create(tmp_path / name, manifest(**changes))
        with cache.writer(**(writer_options or {})) as w:
            for vid in videos:
                w.add_video(vid, video(videos[vid] if isinstance(videos, dict) else 0),
                            source=f"/data/{vid}.mp4", duration=10.0)
            for qid in queries:
                feats, mask = query(queries[qid] if isinstance(queries, dict) else 0)
                w.add_query(qid, feats, mask, text=f"query {qid}")
        return cache

    return build
