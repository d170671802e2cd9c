"""R2Config: official defaults, validation, JSON round trip."""

import json

import pytest

import r2
from r2.model import ConfigError, R2Config


def test_defaults_are_the_official_qvhighlights_configuration():
    cfg = R2Config()
    assert (cfg.video_dim, cfg.query_dim, cfg.num_layers, cfg.hidden_dim) == (768, 512, 4, 256)
    assert (cfg.num_heads, cfg.ffn_ratio, cfg.dropout, cfg.droppath, cfg.use_tef) == (8, 4, 0.5, 0.1, True)
    assert cfg.strides == (1, 2, 4, 8) and cfg.center_radius == 1.5 and cfg.max_clips == 1024
    assert cfg.level_ranges == [(0, 2), (2, 4), (4, 8), (8, float("inf"))]
    assert (cfg.cls_loss, cfg.focal_gamma, cfg.focal_alpha) == ("focal", 2.0, None)
    assert (cfg.cls_weight, cfg.reg_weight, cfg.sal_weight, cfg.video_cal_weight, cfg.layer_cal_weight) == (
        1.0, 0.2, 0.1, 0.1, 0.1)
    assert cfg.sal_directions == ("row", "col") and cfg.tau == 0.07 and cfg.merge_cls_sal
    assert (cfg.fps, cfg.unit, cfg.nms, cfg.nms_threshold, cfg.max_moments) == (0.5, 2.0, "normal", 0.7, 50)
    assert cfg.official_batch_quirks and not cfg.mask_pool and cfg.features is None
    assert r2.R2Config is R2Config


def test_json_round_trip_keeps_every_field():
    cfg = R2Config(strides=(1,), use_tef=False, coord_head=False, merge_cls_sal=False, cls_loss="dynamic_bce",
                   sal_directions=("row",), fps=None, unit=None, nms=None, regress_ranges=[[0, None]],
                   features={"model_id": "openai/clip-vit-base-patch32", "layers": [9, 10, 11, 12], "fps": 0.5})
    text = cfg.to_json()
    json.loads(text)  # plain JSON
    back = R2Config.from_json(text)
    assert back == cfg
    assert R2Config.from_dict(cfg.to_dict()) == cfg
    assert back.strides == (1,) and back.regress_ranges == ((0.0, None),)
    assert R2Config.from_json(R2Config().to_json()) == R2Config()


def test_unknown_keys_and_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown R2Config keys: hiden_dim"):
        R2Config.from_dict({"hiden_dim": 3})
    with pytest.raises(ConfigError, match="power of two"):
        R2Config(strides=(1, 3))
    with pytest.raises(ConfigError, match="dynamic_bce"):
        R2Config(cls_loss="dynamic_bce")  # needs strides (1,)
    with pytest.raises(ConfigError, match="nms"):
        R2Config(nms="soft")
    with pytest.raises(ConfigError, match="divisible"):
        R2Config(hidden_dim=30)
    with pytest.raises(ConfigError, match="malformed"):
        R2Config.from_json("{nope")
    assert ConfigError.user_error
