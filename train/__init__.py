"""r2.train: benchmark annotations, presets, data loading from the cache, the training loop.

Keep this module light: it must not import torch at import time (``r2 score`` reads
annotations through ``r2.train.annotations`` and has to start in well under a second).
"""
