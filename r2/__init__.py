"""r2: video temporal grounding with R²-Tuning (Liu et al., ECCV 2024).

Two stages joined by a feature cache: ``r2.extract`` runs frozen CLIP once over videos and
queries and writes ``r2.cache``; ``r2.train`` fits the small R² Block (``r2.model``) from the
cache alone; ``r2.evaluate`` scores prediction files exactly as each benchmark's reference
evaluator does. ``r2.cli`` is the ``r2`` command.

Shape letters, used in comments and docstrings throughout (``# (B, T, K, N, D)``):

    B   batch
    T   clips of a video (one sampled frame per clip)
    K   CLIP layers kept
    N   tokens per frame (CLS + patch tokens)
    D   width of the video features (768 for ViT-B/32)
    S   query tokens (SOT ... EOT)
    Dt  width of the query features (512 for ViT-B/32)
    C   hidden width of the R² Block (256)
    P   points of the temporal pyramid, all levels together
    L   points of one level of the pyramid (T / stride)
    G   ground-truth windows of a query
    H W height and width of a frame in pixels (224 × 224 after CLIP's crop)

Importing ``r2`` is cheap: torch is imported only when a model class is first used, so
``r2 score`` and ``r2.evaluate`` run in environments without a GPU stack.
"""

__version__ = "0.1.0"

#: The paper's six benchmarks by their canonical names; ``DATASETS`` adds ``custom`` (a
#: QVHighlights-layout jsonl of one's own). One list for the presets, the annotation readers,
#: the evaluators and the CLI.
BENCHMARKS = ("qvhighlights", "charades", "ego4d", "tacos", "youtube", "tvsum")
DATASETS = BENCHMARKS + ("custom",)

from r2.lazy import lazy_exports

# Public names resolved on first use (PEP 562), so `import r2.evaluate` never pulls in torch.
_LAZY = {
    "R2Config": "r2.model",
    "R2Model": "r2.model",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
