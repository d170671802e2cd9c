"""save_pretrained / from_pretrained: the checkpoint format every r2 command reads."""

import json

import pytest
import torch

from r2.model import CONFIG_NAME, WEIGHTS_NAME, R2Model, R2ModelError


def test_save_load_round_trip_gives_identical_outputs(h, tmp_path):
    torch.manual_seed(0)
    cfg = h.tiny_config(features={"model_id": "tiny", "layers": [1, 2, 3], "fps": 0.5})
    model = R2Model(cfg)
    with torch.no_grad():  # move every weight away from its init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    batch = h.collate(h.make_samples(cfg, [9, 5], [3, 4]))
    ref = model(*batch)
    model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads((tmp_path / "run" / CONFIG_NAME).read_text())["features"]["model_id"] == "tiny"
    loaded = R2Model.from_pretrained(tmp_path / "run")
    assert not loaded.training and loaded.config == cfg
    out = loaded(*batch)
    assert torch.equal(out.class_logits, ref.class_logits)
    assert torch.equal(out.saliency, ref.saliency)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # saving again over an existing run replaces it atomically
    model.save_pretrained(tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.partial"))


def test_from_pretrained_errors(h, tmp_path):
    with pytest.raises(R2ModelError, match="config.json"):
        R2Model.from_pretrained(tmp_path)
    cfg = h.tiny_config()
    R2Model(cfg).save_pretrained(tmp_path / "a")
    # weights of another configuration: a clear list of the keys
    (tmp_path / "a" / CONFIG_NAME).write_text(cfg.replace(hidden_dim=64).to_json())
    with pytest.raises(R2ModelError, match=r"\d+ shape mismatches: .*; and \d+ more$") as caught:
        R2Model.from_pretrained(tmp_path / "a")
    assert len(str(caught.value)) < 600  # four keys shown, not every one of the model
    (tmp_path / "a" / CONFIG_NAME).write_text(cfg.replace(coord_head=False).to_json())
    with pytest.raises(R2ModelError, match="unexpected keys: coord_head"):
        R2Model.from_pretrained(tmp_path / "a")
