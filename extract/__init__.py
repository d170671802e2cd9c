"""r2.extract: video decoding, preprocessing, frozen CLIP, feature extraction into r2.cache.

Modules (import the one you need; this package imports nothing heavy by itself):

- ``video``      — PyAV decoding, one frame per clip by the benchmark rule (ffmpeg ``fps``
                   filter semantics), skipping what need not be decoded; numpy + av only.
- ``preprocess`` — CLIP image preprocessing in torch (official ffmpeg recipe, or
                   ``CLIPImageProcessor``-equivalent).
- ``clip``       — :class:`FrozenCLIP`: hub id / local folder, offline errors, kept layers,
                   vision and text features; the shipped tokenizer.
- ``tiny``       — :func:`make_tiny_clip` (``r2 make-tiny-clip``).
- ``synthetic``  — small real videos with known content (tests, benchmarks, ``r2 demo``).
- ``pipeline``   — :func:`extract_features`: decode workers → batched CLIP → ``r2.cache``.
- ``npy_features`` — :func:`import_npy_features`: features made elsewhere, one ``.npy`` per
                   video / query (the official release's layout) → ``r2.cache``.

The names below are resolved on first use, so ``import r2.extract`` stays cheap.
"""

from r2.lazy import lazy_exports

#: the CLIP model of ``r2 extract`` and of ``r2 predict VIDEO`` when none is named (the
#: official R²-Tuning features: ViT-B/32)
DEFAULT_MODEL = "openai/clip-vit-base-patch32"

_LAZY = {
    "extract_features": "r2.extract.pipeline",
    "VideoJob": "r2.extract.pipeline",
    "QueryJob": "r2.extract.pipeline",
    "ExtractionSummary": "r2.extract.pipeline",
    "Failure": "r2.extract.pipeline",
    "import_npy_features": "r2.extract.npy_features",
    "ImportSummary": "r2.extract.npy_features",
    "ExtractionError": "r2.extract.pipeline",
    "FrozenCLIP": "r2.extract.clip",
    "ModelError": "r2.extract.clip",
    "ModelNotFoundError": "r2.extract.clip",
    "load_tokenizer": "r2.extract.clip",
    "make_tiny_clip": "r2.extract.tiny",
    "sample_video": "r2.extract.video",
    "VideoClips": "r2.extract.video",
    "DecodeError": "r2.extract.video",
    "write_segment_video": "r2.extract.synthetic",
}

__all__ = ["DEFAULT_MODEL", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
