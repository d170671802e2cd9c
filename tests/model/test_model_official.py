"""Official R²-Tuning checkpoints: conversion, strictness, safety, round trip, CLI.

The state dicts are built from the key names and shapes of
``reference/official_state_dict.md`` (written out below), independently of r2's own
module names, and the converted model is checked against a direct implementation of the
official forward pass on those official names (batch size 1, as the official evaluation).
"""

import argparse
import json
import math
import os
import shlex

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from r2.cli import main
from r2.model import R2Config, R2Model
from r2.model.official import (OfficialCheckpointError, convert_official, dataset_from_filename,
                               infer_config, to_official_state_dict)

# ----------------------------------------------------------------------------- the official layout


def official_shapes(tvsum: bool = False) -> dict[str, tuple]:
    """Key -> shape of the official state dict (official_state_dict.md), C=256, K=4."""
    shapes = {"coef": (1,) if tvsum else (4,), "adapter.gate": (3,), "adapter.scale": (4,)}
    video_in = 768 if tvsum else 770
    for name, d_in in (("video_map", video_in), ("query_map", 512)):
        shapes.update({f"adapter.{name}.0.weight": (d_in,), f"adapter.{name}.0.bias": (d_in,),
                       f"adapter.{name}.2.weight": (256, d_in), f"adapter.{name}.2.bias": (256,),
                       f"adapter.{name}.4.weight": (256,), f"adapter.{name}.4.bias": (256,),
                       f"adapter.{name}.6.weight": (256, 256), f"adapter.{name}.6.bias": (256,)})
    for name in ("v_map", "q_map"):
        shapes.update({f"adapter.{name}.weight": (256, 256), f"adapter.{name}.bias": (256,)})
    for att in ("cross_att", "self_att"):
        for proj in "qkvm":
            shapes.update({f"adapter.tem.{att}.{proj}.weight": (256, 256), f"adapter.tem.{att}.{proj}.bias": (256,)})
        shapes.update({f"adapter.tem.{att}_norm.weight": (256,), f"adapter.tem.{att}_norm.bias": (256,)})
    shapes.update({"adapter.tem.ffn.mapping.0.weight": (1024, 256), "adapter.tem.ffn.mapping.0.bias": (1024,),
                   "adapter.tem.ffn.mapping.2.weight": (256, 1024), "adapter.tem.ffn.mapping.2.bias": (256,),
                   "adapter.tem.ffn_norm.weight": (256,), "adapter.tem.ffn_norm.bias": (256,)})
    if not tvsum:
        for level, idx in ((1, [1]), (2, [1, 6]), (3, [1, 6, 11])):
            for i in idx:
                shapes.update({f"pyramid.blocks.{level}.{i}.weight": (256, 256, 2),
                               f"pyramid.blocks.{level}.{i}.bias": (256,),
                               f"pyramid.blocks.{level}.{i + 2}.weight": (256,),
                               f"pyramid.blocks.{level}.{i + 2}.bias": (256,)})
    shapes["pooling.att.weight"] = (1, 256)
    heads = ["class_head"] if tvsum else ["class_head", "coord_head"]
    for head in heads:
        out = 1 if head == "class_head" else 2
        shapes.update({f"{head}.module.1.weight": (256, 256, 3), f"{head}.module.1.bias": (256,),
                       f"{head}.module.3.weight": (out, 256, 3), f"{head}.module.3.bias": (out,)})
    shapes["loss._loss_sal.scale"] = (1,)
    return shapes


def official_state(tvsum: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(tvsum).items():
        if key == "loss._loss_sal.scale":
            value = torch.tensor([math.log(1 / 0.07)])
        elif key in ("adapter.gate", "adapter.scale"):
            value = torch.randn(shape, generator=g) * 0.8
        elif key == "coef":
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and (".0." in key or ".4." in key or "norm" in key or
                                  (key.startswith("pyramid") and int(key.split(".")[3]) % 5 == 3)):
            value = (1 if key.endswith("weight") else 0) + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[1] * (shape[2] if len(shape) == 3 else 1) if len(shape) > 1 else 256
            value = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        state[key] = value
    return state


def test_the_documented_layout_has_the_documented_sizes():
    for tvsum, entries, params in ((False, 83, 2_836_242), (True, 55, 1_846_281)):
        shapes = official_shapes(tvsum)
        assert len(shapes) == entries
        assert sum(math.prod(s) for k, s in shapes.items() if k != "loss._loss_sal.scale") == params


# ----------------------------------------------------------------------------- reference forward


def reference_forward(sd, video, query, strides, use_tef, merge, heads=8):
    """The official forward on official names, batch size 1: video (T, K, N, D), query (K, S, Dt)."""
    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])

    def lin(x, p):
        return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))

    def mlp(x, p):
        return lin(ln(F.relu(lin(ln(x, p + ".0"), p + ".2")), p + ".4"), p + ".6")

    def mha(q, k, v, p):
        hd = q.shape[-1] // heads
        q = lin(q, p + ".q").view(-1, heads, hd).transpose(0, 1)
        k = lin(k, p + ".k").view(-1, heads, hd).transpose(0, 1)
        v = lin(v, p + ".v").view(-1, heads, hd).transpose(0, 1)
        att = (q @ k.transpose(1, 2) / hd ** 0.5).softmax(-1)
        return lin((att @ v).transpose(0, 1).reshape(-1, heads * hd), p + ".m")

    t, k = video.shape[0], sd["adapter.scale"].numel()
    c = sd["adapter.v_map.weight"].shape[0]
    v_all = video.permute(1, 0, 2, 3)  # (K, T, N, D)
    if use_tef:
        j = torch.arange(t, dtype=torch.float32)
        tef = torch.stack((j / t, (j + 1) / t), 1)[:, None].expand(t, video.shape[2], 2)
        v_all = torch.cat((v_all, tef[None].expand(k, -1, -1, -1)), -1)
    n = torch.arange(1, t + 1, dtype=torch.float32) / (t + 1e-6) * 2 * math.pi
    div = 10000 ** (torch.arange(c) // 2 * 2 / c)
    ang = n[:, None] / div
    pe = torch.empty(t, c)
    pe[:, 0::2], pe[:, 1::2] = ang[:, 0::2].sin(), ang[:, 1::2].cos()
    h = None
    for i in range(k - 1, -1, -1):
        v = mlp(v_all[i], "adapter.video_map")  # (T, N, C)
        q = mlp(query[i], "adapter.query_map")  # (S, C)
        att = (lin(q, "adapter.q_map")[None] @ lin(v, "adapter.v_map").transpose(1, 2) / c ** 0.5).softmax(-1)
        o = (att @ v + q[None]).amax(1)  # (T, C)
        e = v[:, 0] + sd["adapter.scale"][i].tanh() * o
        if i < k - 1:
            gate = sd["adapter.gate"][i].sigmoid()
            e = gate * e + (1 - gate) * h
        x = ln(e + mha(e + pe, q, q, "adapter.tem.cross_att"), "adapter.tem.cross_att_norm")
        x = ln(x + mha(x + pe, x + pe, x, "adapter.tem.self_att"), "adapter.tem.self_att_norm")
        ffn = lin(F.relu(lin(x, "adapter.tem.ffn.mapping.0")), "adapter.tem.ffn.mapping.2")
        h = ln(x + ffn, "adapter.tem.ffn_norm")
    h = F.relu(h)
    levels = []
    for li, s in enumerate(strides):
        if t < s:
            continue
        x = h
        for jb in range(int(math.log2(s))):
            p = f"pyramid.blocks.{li}.{5 * jb + 1}"
            x = F.conv1d(x.t()[None], sd[p + ".weight"], sd[p + ".bias"], stride=2)[0].t()
            x = F.relu(ln(x, f"pyramid.blocks.{li}.{5 * jb + 3}"))
        levels.append(x)

    def head(x, p):
        y = F.relu(F.conv1d(x.t()[None], sd[p + ".module.1.weight"], sd[p + ".module.1.bias"], padding=1))
        return F.conv1d(y, sd[p + ".module.3.weight"], sd[p + ".module.3.bias"], padding=1)[0].t()

    cls = torch.cat([head(x, "class_head") for x in levels])[:, 0]
    coord = None
    if "coord_head.module.1.weight" in sd:
        coord = torch.cat([head(x, "coord_head").exp() * sd["coef"][li] for li, x in enumerate(levels)])
    a = (q @ sd["pooling.att.weight"].t()).softmax(0)  # (S, 1)
    qbar = (a * q).sum(0)
    sal = []
    for x, score in zip(levels, cls.sigmoid().split([x.shape[0] for x in levels])):
        r = t // score.numel()
        rep = score.repeat_interleave(r)
        sal.append(torch.cat((rep, rep[-1:].repeat(t - rep.numel()))))
    sal = torch.stack(sal).amax(0)
    if merge:
        sal = sal * F.cosine_similarity(h, qbar[None], dim=-1)
    return cls, coord, sal


def _features(t, s, video_dim=768, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 4, 5, video_dim, generator=g), torch.randn(4, s, 512, generator=g)


@pytest.mark.parametrize("tvsum", [False, True])
def test_converted_model_matches_the_official_forward(tvsum, tmp_path):
    state = official_state(tvsum)
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    model = R2Model.from_official(path, dataset="tvsum" if tvsum else "qvhighlights")
    assert not model.training
    assert model.num_trainable_parameters() == (1_846_281 if tvsum else 2_836_242)
    cfg = model.config
    assert cfg.use_tef is (not tvsum) and cfg.coord_head is (not tvsum)
    assert cfg.strides == ((1,) if tvsum else (1, 2, 4, 8))
    assert cfg.tau == pytest.approx(0.07)
    for t, s in ((75, 9), (13, 4)):
        video, query = _features(t, s)
        out = model(video[None], torch.ones(1, t, dtype=torch.bool), query[None], torch.ones(1, s, dtype=torch.bool))
        with torch.no_grad():
            cls, coord, sal = reference_forward(state, video, query, cfg.strides, cfg.use_tef, cfg.merge_cls_sal)
        torch.testing.assert_close(out.class_logits[0], cls, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(out.saliency[0], sal, atol=2e-4, rtol=1e-4)
        if coord is None:
            assert out.coord_offsets is None
        else:
            torch.testing.assert_close(out.coord_offsets[0], coord, atol=2e-4, rtol=1e-3)


# ----------------------------------------------------------------------------- round trip, wrappers


@pytest.mark.parametrize("tvsum", [False, True])
def test_round_trip_back_to_the_official_names(tvsum, tmp_path):
    state = official_state(tvsum)
    torch.save(state, tmp_path / "c.pth")
    model = R2Model.from_official(tmp_path / "c.pth", dataset="tvsum" if tvsum else "tacos")
    back = to_official_state_dict(model)
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_wrapped_checkpoint_with_clip_and_module_prefixes_gives_the_same_model(h, tmp_path):
    torch.manual_seed(0)
    source = R2Model(R2Config(dropout=0.35)).eval()  # "the model it came from"
    with torch.no_grad():
        source.block.pool_scale.fill_(0.3)
    official = to_official_state_dict(source)
    wrapped = {"meta": {"epoch": 30, "iter": 1000}, "optimizer": {"state": {}},
               "state_dict": {**{f"module.{k}": v for k, v in official.items()},
                              "module.clip.visual.conv1.weight": torch.zeros(3),
                              "module.clip.logit_scale": torch.zeros(())}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    run = tmp_path / "run"
    summary = convert_official(tmp_path / "wrapped.pth", run, dataset="charades")
    assert summary.trainable_parameters == 2_836_242
    loaded = R2Model.from_pretrained(run)  # the converted directory is an ordinary r2 run
    cfg = loaded.config
    assert (cfg.fps, cfg.unit, cfg.nms, cfg.dropout, cfg.sal_weight) == (1.0, 0.1, "linear", 0.35, 0.01)
    assert cfg.features == {"model_id": "openai/clip-vit-base-patch32", "layers": [9, 10, 11, 12], "fps": 1.0}
    record = json.loads((run / "official_source.json").read_text())
    assert record == summary.record() and record["dataset"] == "charades" and summary.dataset_source == "given"
    video, query = _features(20, 6)
    args = (video[None], torch.ones(1, 20, dtype=torch.bool), query[None], torch.ones(1, 6, dtype=torch.bool))
    ref, out = source(*args), loaded(*args)
    assert torch.equal(ref.class_logits, out.class_logits)
    assert torch.equal(ref.coord_offsets, out.coord_offsets)
    with pytest.raises(OfficialCheckpointError, match="--force"):
        convert_official(tmp_path / "wrapped.pth", run)
    convert_official(tmp_path / "wrapped.pth", run, dataset="charades", overwrite=True)


def test_dataset_presets_of_the_converted_config():
    mr, hd = official_state(False), official_state(True)
    assert (infer_config(mr, "qvhighlights").unit, infer_config(mr, "qvhighlights").nms) == (2.0, "normal")
    assert infer_config(mr, "ego4d").unit is None and infer_config(mr, "tacos").nms == "linear"
    yt = infer_config(hd, "youtube")
    assert (yt.fps, yt.nms, yt.cls_loss, yt.sal_directions, yt.merge_cls_sal) == (None, None, "dynamic_bce",
                                                                                 ("row",), False)
    with pytest.raises(OfficialCheckpointError, match="not one for charades"):
        infer_config(hd, "charades")
    with pytest.raises(OfficialCheckpointError, match="unknown data set"):
        infer_config(mr, "kinetics")


# ----------------------------------------------------------------------------- errors


def _save(state, path):
    torch.save(state, path)
    return path


def test_unknown_missing_and_misshaped_keys_are_listed(tmp_path):
    state = official_state()
    state["adapter.extra.weight"] = torch.zeros(3)
    with pytest.raises(OfficialCheckpointError, match="unknown keys: adapter.extra.weight"):
        R2Model.from_official(_save(state, tmp_path / "a.pth"))
    state = official_state()
    del state["adapter.tem.self_att.k.bias"], state["pyramid.blocks.2.8.weight"]
    with pytest.raises(OfficialCheckpointError,
                       match="missing keys: adapter.tem.self_att.k.bias, pyramid.blocks.2.8.weight"):
        R2Model.from_official(_save(state, tmp_path / "b.pth"))
    state = official_state()
    state["adapter.q_map.weight"] = torch.zeros(256, 128)
    with pytest.raises(OfficialCheckpointError, match=r"adapter.q_map.weight: \(256, 128\), expected \(256, 256\)"):
        R2Model.from_official(_save(state, tmp_path / "c.pth"))
    state = official_state()
    state["adapter.video_map.0.weight"] = torch.zeros(700)
    with pytest.raises(OfficialCheckpointError, match="matches no known CLIP visual width"):
        R2Model.from_official(_save(state, tmp_path / "d.pth"))
    with pytest.raises(OfficialCheckpointError, match="not an official"):
        R2Model.from_official(_save({"weight": torch.zeros(2)}, tmp_path / "e.pth"))
    with pytest.raises(OfficialCheckpointError, match="not found"):
        R2Model.from_official(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(OfficialCheckpointError):
        R2Model.from_official(tmp_path / "junk.pth")


@pytest.mark.parametrize("damage", ["random bytes", "text", "truncated"])
def test_a_damaged_file_is_called_damaged_not_untrusted(tmp_path, damage):
    good = _save({"state_dict": official_state()}, tmp_path / "good.pth").read_bytes()
    path = tmp_path / "r2_tuning_qvhighlights-ed516355.pth"
    path.write_bytes({"random bytes": np.random.default_rng(0).bytes(4000), "text": b"hello world\n" * 50,
                      "truncated": good[:len(good) // 2]}[damage])
    for trust in (False, True):
        with pytest.raises(OfficialCheckpointError, match="not a torch.save file, or a damaged one") as err:
            R2Model.from_official(path, trust_checkpoint=trust)
        assert str(path) in str(err.value) and "--trust-checkpoint" not in str(err.value)


def test_a_file_name_naming_the_wrong_kind_of_data_set_says_where_the_name_came_from(tmp_path):
    path = _save({"state_dict": official_state()}, tmp_path / "r2_tuning_youtube_dog-0a1b2c3d.pth")
    with pytest.raises(OfficialCheckpointError, match="(?s)not one for youtube.*read from the file name "
                       "r2_tuning_youtube_dog-0a1b2c3d.pth; pass --dataset"):
        R2Model.from_official(path)
    with pytest.raises(OfficialCheckpointError) as err, pytest.warns(UserWarning, match="says youtube"):
        R2Model.from_official(path, dataset="tvsum")  # given explicitly: no file-name remark in the error
    assert "not one for tvsum" in str(err.value) and "file name" not in str(err.value)


def test_pickled_objects_need_explicit_trust(tmp_path):
    path = _save({"state_dict": official_state(), "meta": argparse.Namespace(lr=5e-4)}, tmp_path / "p.pth")
    with pytest.raises(OfficialCheckpointError, match="(?s)refused.*argparse.Namespace.*--trust-checkpoint"):
        R2Model.from_official(path)
    model = R2Model.from_official(path, dataset="qvhighlights", trust_checkpoint=True)
    assert model.num_trainable_parameters() == 2_836_242


def test_a_code_payload_is_refused_unrun_and_the_reason_names_its_global(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:  # what a malicious checkpoint holds: unpickling it runs a shell command
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    path = _save({"state_dict": official_state(), "meta": Payload()}, tmp_path / "evil.pth")
    blocked = f"{os.system.__module__}.system"  # posix.system
    with pytest.raises(OfficialCheckpointError) as err:
        R2Model.from_official(path, dataset="qvhighlights")
    message = str(err.value)
    assert not marker.exists()
    assert f"GLOBAL {blocked}" in message and "--trust-checkpoint" in message, message
    assert "In PyTorch 2.6" not in message  # torch's general advice is not the reason
    result = CliRunner().invoke(main, ["convert-official", str(path), "--out", str(tmp_path / "run"),
                                       "--dataset", "qvhighlights"])
    assert result.exit_code == 1 and f"GLOBAL {blocked}" in result.output and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "run").exists()
    # the payload is live: a full load, which only --trust-checkpoint allows, runs it
    R2Model.from_official(path, dataset="qvhighlights", trust_checkpoint=True)
    assert marker.exists()


def test_the_data_set_is_required_unless_the_released_file_name_gives_it(tmp_path):
    runner = CliRunner()
    path = _save(official_state(), tmp_path / "model.pth")
    with pytest.raises(OfficialCheckpointError, match="cannot tell which data set.*pass --dataset"):
        convert_official(path, tmp_path / "run")
    with pytest.raises(OfficialCheckpointError, match="pass --dataset"):
        R2Model.from_official(path)
    result = runner.invoke(main, ["convert-official", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "pass --dataset" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    # the released names carry the data set (README model zoo of yeliudev/R2-Tuning)
    assert dataset_from_filename("ckpts/r2_tuning_qvhighlights-ed516355.pth") == "qvhighlights"
    assert dataset_from_filename("r2_tuning_tvsum_bk-45b59440.pth") == "tvsum"
    assert dataset_from_filename("R2_Tuning_Ego4D-6a6f5754.safetensors") == "ego4d"
    for name in ("model.pth", "r2_tuning_kinetics-1de02112.pth", "my_r2_tuning_charades.pth"):
        assert dataset_from_filename(name) is None, name
    released = _save(official_state(), tmp_path / "r2_tuning_charades-1de02112.pth")
    result = runner.invoke(main, ["convert-official", str(released), "--out", str(tmp_path / "cha")])
    assert result.exit_code == 0, result.output
    assert "charades (from the file name)" in result.output
    cfg = R2Model.from_pretrained(tmp_path / "cha").config
    assert (cfg.fps, cfg.unit, cfg.nms, cfg.dropout, cfg.sal_weight) == (1.0, 0.1, "linear", 0.35, 0.01)
    record = json.loads((tmp_path / "cha" / "official_source.json").read_text())
    assert (record["dataset"], record["dataset_source"]) == ("charades", "file name")
    # --dataset, when given, is what counts, with a warning when the released name says otherwise
    with pytest.warns(UserWarning, match=r"^r2_tuning_charades-1de02112.pth: its released name says charades, "
                      r"--dataset \(dataset=...\) says tacos: converting it as tacos \(fps, rounding unit and NMS "
                      r"of tacos\)$"):
        summary = convert_official(released, tmp_path / "tac", dataset="TACoS")
    assert (summary.dataset, summary.dataset_source, summary.config["unit"]) == ("tacos", "given", None)
    hd = _save(official_state(True), tmp_path / "r2_tuning_youtube_dog-702bd293.pth")
    assert R2Model.from_official(hd).config.fps is None  # YouTube: per-video clip rate


def test_a_checkpoint_without_weights_or_with_nan_weights_is_refused(tmp_path):
    """An empty state dict is said to be empty (not "these entries are not tensors:
    state_dict"); NaN or infinite weights are refused, naming the tensors, instead of being
    converted into a model whose every prediction is NaN."""
    empty = _save({"state_dict": {}}, tmp_path / "empty.pth")
    with pytest.raises(OfficialCheckpointError, match=r"^its 'state_dict' is empty: the checkpoint holds no "
                       r"weights$"):
        convert_official(empty, tmp_path / "run", dataset="qvhighlights")
    state = official_state()
    bad = sorted(state)[:2]
    state[bad[0]] = state[bad[0]].clone().fill_(float("nan"))
    state[bad[1]] = state[bad[1]].clone()
    state[bad[1]].view(-1)[0] = float("inf")
    damaged = _save({"state_dict": state}, tmp_path / "nan.pth")
    result = CliRunner().invoke(main, ["convert-official", str(damaged), "--out", str(tmp_path / "run"),
                                       "--dataset", "qvhighlights"])
    assert result.exit_code == 1, result.output
    assert (f"2 weight tensor(s) hold NaN or infinite values ({bad[0]}, {bad[1]}): the checkpoint is damaged, "
            "or of a run that diverged") in result.output
    assert not (tmp_path / "run").exists()


def test_safetensors_input(tmp_path):
    from safetensors.torch import save_file

    save_file(official_state(True), str(tmp_path / "x.safetensors"))
    assert R2Model.from_official(tmp_path / "x.safetensors", dataset="tvsum").num_trainable_parameters() == 1_846_281


# ----------------------------------------------------------------------------- CLI


def test_cli_convert_official(tmp_path):
    path = _save({"state_dict": official_state(), "meta": argparse.Namespace(lr=5e-4)}, tmp_path / "q.pth")
    runner = CliRunner()
    result = runner.invoke(main, ["convert-official", str(path), "--out", str(tmp_path / "run"),
                                  "--dataset", "qvhighlights"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "--trust-checkpoint" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["convert-official", str(path), "--out", str(tmp_path / "run"),
                                  "--dataset", "qvhighlights", "--trust-checkpoint"])
    assert result.exit_code == 0, result.output
    assert "2,836,242 trainable" in result.output
    assert R2Model.from_pretrained(tmp_path / "run").config.nms == "normal"
    help_text = runner.invoke(main, ["convert-official", "--help"]).output
    assert "--dataset" in help_text and "--trust-checkpoint" in help_text


def test_official_dataset_table_agrees_with_the_train_presets():
    presets = pytest.importorskip("r2.train.presets")
    from r2.model.official import OFFICIAL_DATASETS

    for name, settings in OFFICIAL_DATASETS.items():
        cfg = R2Config(**presets.get_preset(name).model_config_kwargs())
        for key, value in settings.items():
            assert getattr(cfg, key) == value, (name, key)


def test_r2_official_is_the_same_api_under_the_short_name():
    import r2.model.official as full
    import r2.official as short

    assert set(short.__all__) == set(full.__all__)
    for name in full.__all__:
        assert getattr(short, name) is getattr(full, name), name
