"""r2.train: benchmark annotations, presets, data loading from the cache, the training loop.

Keep this module light: it must not import torch at import time (``r2 score`` reads
annotations through ``r2.train.annotations`` and has to start in well under a second).
The training and prediction entry points are imported on first use::

    from r2.train import fit, predict

(a new video, which needs ``r2.extract`` too: ``r2.grounding.predict_video``)
"""

from r2.lazy import lazy_exports

# name -> submodule, resolved on first use (PEP 562) so that importing r2.train stays cheap
_LAZY = {
    "fit": ".loop",
    "FitOptions": ".loop",
    "FitResult": ".loop",
    "MetricBest": ".loop",
    "FitError": ".loop",
    "predict": ".inference",
    "PredictResult": ".inference",
    "GroundingDataset": ".data",
    "load_annotations": ".annotations",
    "GroundingSample": ".annotations",
    "get_preset": ".presets",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
