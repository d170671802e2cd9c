"""Mixed precision in ``r2 fit`` (``cpu_amp``): the autocast and GradScaler path that CUDA runs
(``amp``), exercised on the CPU — it trains, it changes the arithmetic, and a run with a
GradScaler resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from r2.train.synthetic import TINY_OVERRIDES, make_synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("amp"), train_videos=24, val_videos=6,
                                  concepts=4, seed=5)


def _fit(data, run_dir, epochs, cpu_amp, resume=False, messages=None):
    from r2.train import fit

    return fit(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
               run_dir=run_dir, epochs=epochs, workers=0, seed=11, device="cpu", resume=resume,
               overrides={**TINY_OVERRIDES, "cpu_amp": cpu_amp}, progress=False,
               log=(messages.append if messages is not None else lambda m: None))


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def test_cpu_autocast_trains_and_differs_from_fp32(data, tmp_path):
    messages = []
    runs = {amp: _fit(data, tmp_path / amp, 3, amp, messages=messages) for amp in ("none", "bf16", "fp16")}
    assert any(m.endswith("amp bf16") for m in messages) and any(m.endswith("amp fp16") for m in messages)
    for amp, result in runs.items():
        losses = [h["loss"]["total"] for h in result.history]
        assert all(map(lambda v: v == v, losses)) and losses[-1] < losses[0], (amp, losses)
    fp32 = _weights(tmp_path / "none")
    for amp in ("bf16", "fp16"):  # autocast really ran: the low-precision products moved the weights
        low = _weights(tmp_path / amp)
        assert fp32.keys() == low.keys()
        diff = max(float((fp32[k] - low[k]).abs().max()) for k in fp32)
        assert 0 < diff < 0.5, (amp, diff)
    preset = json.loads((tmp_path / "bf16" / "preset.json").read_text())
    assert preset["cpu_amp"] == "bf16" and preset["amp"] == "fp16"  # CUDA's setting is kept apart


def test_fp16_grad_scaler_state_is_checkpointed_and_resumed(data, tmp_path):
    from r2.train import checkpoint as ckpt

    _fit(data, tmp_path / "whole", 3, "fp16")
    _fit(data, tmp_path / "cut", 1, "fp16")
    _, state, trainer = ckpt.load_last(tmp_path / "cut")
    # the state of a scaler that ran: every step of the epoch counted towards its next growth
    # of the scale (a fresh scaler on resume would start that count again)
    assert trainer["scaler"]["_growth_tracker"] == state["iteration"] > 0, trainer["scaler"]
    resumed = _fit(data, tmp_path / "cut", 3, "fp16", resume=True)
    assert resumed.resumed_from == 1
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    for key in whole:
        assert torch.equal(whole[key], cut[key]), key
    assert ckpt.load_last(tmp_path / "cut")[2]["scaler"] == ckpt.load_last(tmp_path / "whole")[2]["scaler"]


def test_cpu_amp_is_checked_and_a_run_without_it_resumes(data, tmp_path):
    from r2.train.loop import FitError, _preset_differences
    from r2.train.presets import PresetError, get_preset

    with pytest.raises(PresetError, match="cpu_amp"):
        get_preset("custom", overrides={"cpu_amp": "int8"})
    _fit(data, tmp_path / "a", 1, "none")
    with pytest.raises(FitError, match="cpu_amp"):  # the precision may not change on resume
        _fit(data, tmp_path / "a", 2, "bf16", resume=True)
    # a run written before cpu_amp existed ran fp32 on the CPU: the default, no difference
    saved = get_preset("custom").to_dict()
    del saved["cpu_amp"]
    assert _preset_differences(saved, get_preset("custom")) == []
    assert _preset_differences(saved, get_preset("custom", overrides={"cpu_amp": "bf16"})) == [
        'cpu_amp: the run has "none", now "bf16"']
