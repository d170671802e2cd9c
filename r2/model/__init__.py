"""The R² Block, heads, losses and decoding of R²-Tuning (Liu et al., ECCV 2024).

    from r2.model import R2Config, R2Model, R2Targets
    model = R2Model(R2Config())                      # the official QVHighlights model
    out = model(video, video_mask, query, query_mask)  # R2Output
    loss = model.compute_loss(out, targets)          # R2Loss(total, terms)
    preds = model.decode(out, durations)             # [Prediction(windows, saliency)]
    model.save_pretrained("runs/x"); R2Model.from_pretrained("runs/x")
    R2Model.from_official("r2_tuning_qvhighlights.pth", dataset="qvhighlights")

Modules: config (R2Config), block (R2 Block), pyramid, heads, points (point table and
label assignment), losses, decoding, model (R2Model), official (official checkpoints).
"""

from .config import ConfigError, R2Config, R2ModelError
from .decoding import Prediction
from .losses import R2Loss, R2Targets
from .model import CONFIG_NAME, WEIGHTS_NAME, R2Model, R2Output

__all__ = ["R2Config", "R2Model", "R2Output", "R2Targets", "R2Loss", "Prediction", "R2ModelError",
           "ConfigError", "CONFIG_NAME", "WEIGHTS_NAME"]
