"""r2.train.presets: the reference numbers, overrides, files, hand-off to the model config."""

import dataclasses
import json
import subprocess
import sys

import pytest

from r2.train.presets import (
    PRESETS,
    Preset,
    PresetError,
    get_preset,
    load_overrides,
    parse_set_options,
)

# r2tuning.md §5.2 (batch, epochs, lr, steps, warm-up, dropout, strides, TEF, NMS, unit, eval
# split), §4.6 (L_sal weight, directions, class loss, regression), §1.3 (fps), §5.3 (metric)
REFERENCE = {
    #               fps    bs   ep   lr      steps  wu   drop  strides       tef    nms       unit  sal   eval
    "qvhighlights": (0.5, 128, 30, 5e-4, (20,), 500, 0.5, (1, 2, 4, 8), True, "normal", 2.0, 0.1, "val"),
    "charades": (1.0, 32, 50, 2.5e-4, (30,), 500, 0.35, (1, 2, 4, 8), True, "linear", 0.1, 0.01, "test"),
    "ego4d": (0.5, 32, 30, 2.5e-4, (20,), 500, 0.3, (1, 2, 4, 8), True, "linear", None, 0.1, "val"),
    "tacos": (0.5, 32, 100, 2.5e-4, (50,), 500, 0.5, (1, 2, 4, 8), True, "linear", None, 0.05, "test"),
    "youtube": ("auto", 4, 200, 5e-4, (), 50, 0.5, (1,), False, None, None, 0.1, "val"),
    "tvsum": (0.5, 4, 500, 5e-4, (), 50, 0.5, (1,), False, None, None, 0.1, "val"),
}
FIELDS = ("fps", "batch_size", "epochs", "lr", "lr_milestones", "warmup_iters", "dropout",
          "strides", "use_tef", "nms", "unit", "sal_weight", "eval_split")


@pytest.mark.parametrize("name", list(REFERENCE))
def test_preset_numbers_match_the_reference_table(name):
    preset = get_preset(name)
    assert tuple(getattr(preset, f) for f in FIELDS) == REFERENCE[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_common_recipe(name):
    p = get_preset(name)
    assert p.optimizer == "adamw" and p.weight_decay == 1e-4
    assert p.betas == (0.9, 0.999) and p.eps == 1e-8
    assert p.lr_gamma == 0.1 and p.warmup_ratio == 0.001
    assert p.grad_clip == 35.0
    assert p.amp == "fp16" and p.num_workers == 4 and p.drop_last is False
    assert p.layers == (-4, -3, -2, -1) and p.resolve_layers() == [9, 10, 11, 12]
    assert p.max_clips == 1024 and p.long_video_rule == "crop"
    assert p.hidden_dim == 256 and p.num_heads == 8 and p.ffn_ratio == 4 and p.droppath == 0.1
    assert p.cls_weight == 1.0 and p.video_cal_weight == 0.1 and p.layer_cal_weight == 0.1
    assert p.tau == 0.07 and p.focal_gamma == 2.0 and p.focal_alpha is None
    assert p.center_radius == 1.5
    assert p.max_moments == 50 and p.nms_threshold == 0.7
    assert p.query_max_tokens == 77 and p.eval_every == 1


def test_per_dataset_details():
    qvh = get_preset("qvhighlights")
    assert qvh.repeat == 4 and qvh.main_metric == "MR-full-mAP" and qvh.task == "mr_hd"
    assert qvh.clip_rule == "annotation_grid" and qvh.min_duration == 5.0
    for name in ("charades", "ego4d", "tacos"):
        p = get_preset(name)
        assert p.task == "mr" and p.repeat == 1 and p.min_duration == 5.0
        assert p.cls_loss == "focal" and p.reg_weight == 0.2 and p.sal_directions == ("row", "col")
        assert p.merge_cls_sal and p.coord_head
        assert p.main_metric == "MR-full-R1@0.7" and p.saliency_target == "windows"
        assert p.lr_schedule == "step"
    assert get_preset("charades").selection_on_test and get_preset("tacos").selection_on_test
    assert not get_preset("ego4d").selection_on_test and not qvh.selection_on_test
    for name in ("youtube", "tvsum"):
        p = get_preset(name)
        assert p.task == "hd" and p.is_highlight_only
        assert p.cls_loss == "dynamic_bce" and p.reg_weight == 0.0 and p.sal_directions == ("row",)
        assert not p.coord_head and not p.merge_cls_sal and not p.use_tef
        assert p.lr_schedule == "constant" and p.main_metric == "mAP"
        assert p.query_source == "title" and p.min_duration == 0.0
    assert get_preset("youtube").positive_rule == "gt_half"
    assert get_preset("youtube").clip_rule == "youtube_per_clip"
    assert get_preset("youtube").domains == ("dog", "gymnastics", "parkour", "skating", "skiing",
                                             "surfing")
    assert get_preset("tvsum").positive_rule == "gt_median"
    assert len(get_preset("tvsum").domains) == 10
    assert get_preset("charades").clip_length == 1.0 and get_preset("youtube").clip_length is None
    custom = get_preset("custom")
    assert custom.min_duration == 0.0 and custom.repeat == 1 and custom.unit is None


def test_names_and_aliases():
    assert get_preset("Charades-STA") is PRESETS["charades"]
    assert get_preset("nlq").name == "ego4d"
    with pytest.raises(PresetError, match="unknown dataset 'kinetics'") as info:
        get_preset("kinetics")
    assert info.value.user_error


def test_override_typed_and_from_strings():
    base = get_preset("charades")
    p = base.override({"lr": 1e-4, "epochs": "3", "lr_milestones": "1,2", "unit": "none",
                       "use_tef": "false", "strides": "[1, 2]", "nms": "normal",
                       "fps": "2", "betas": [0.8, 0.99]})
    assert (p.lr, p.epochs, p.lr_milestones, p.unit, p.use_tef, p.strides, p.nms, p.fps,
            p.betas) == (1e-4, 3, (1, 2), None, False, (1, 2), "normal", 2.0, (0.8, 0.99))
    assert base.lr == 2.5e-4  # the preset is untouched
    assert base.override() is base
    assert base.override(lr="5e-4").lr == 5e-4 and isinstance(base.override(lr=1).lr, float)
    assert base.override(focal_alpha="0.25").focal_alpha == 0.25
    assert base.override({"lr_milestones": "[]"}).lr_milestones == ()
    assert base.override(data_files={"train": ["a.jsonl"]}).data_files == {"train": ("a.jsonl",)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.lr = 1.0


@pytest.mark.parametrize("overrides,fragment", [
    ({"lrr": 1e-4}, "unknown preset field 'lrr' (did you mean lr?)"),
    ({"epoch": 3}, "did you mean epochs"),
    ({"epochs": "2.5"}, "epochs: expected an integer, got 2.5"),
    ({"epochs": 2.0}, "epochs: expected an integer"),
    ({"lr": "fast"}, "lr: expected a number"),
    ({"use_tef": "maybe"}, "use_tef: expected true or false"),
    ({"use_tef": 1}, "use_tef: expected true or false"),
    ({"nms": "soft"}, "nms: must be one of normal, linear or none"),
    ({"dropout": 1.5}, "dropout: must be in [0, 1)"),
    ({"lr": -1}, "lr: must be > 0"),
    ({"batch_size": 0}, "batch_size: must be >= 1"),
    ({"strides": [2, 1]}, "strides: must be distinct powers of two"),
    ({"strides": [1, 3]}, "strides: must be distinct powers of two"),
    ({"cls_loss": "dynamic_bce"}, "dynamic_bce (saliency-only data) needs strides (1,)"),
    ({"sal_directions": ["row", "diag"]}, "sal_directions"),
    ({"betas": [0.9]}, "betas: expected 2 values"),
    ({"fps": "fast"}, "fps: must be a positive number or 'auto'"),
    ({"fps": "auto"}, "'auto' only goes with clip_rule youtube_per_clip"),
    ({"name": "tacos"}, "'name' cannot be overridden"),
    ({"hidden_dim": 100}, "not divisible by num_heads"),
    ({"eval_split": "train"}, "eval_split: must be val or test (the split the --val file holds), got 'train'"),
    ({"lr_milestones": "5,,10"}, "lr_milestones: an empty value in the list '5,,10'"),  # was read as 5,10
])
def test_override_errors(overrides, fragment):
    with pytest.raises(PresetError) as info:
        get_preset("charades").override(overrides)
    assert fragment in str(info.value)
    assert info.value.user_error


def test_set_options():
    assert parse_set_options(["lr=1e-4", "lr_milestones=10,20", "unit="]) == {
        "lr": "1e-4", "lr_milestones": "10,20", "unit": ""}
    with pytest.raises(PresetError, match="key=value"):
        parse_set_options(["lr"])
    p = get_preset("qvhighlights", overrides=parse_set_options(["lr=1e-4", "epochs=3"]))
    assert (p.lr, p.epochs) == (1e-4, 3)


def test_overrides_from_json_and_yaml(tmp_path, monkeypatch):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"lr": 1e-4, "lr_milestones": [5], "nms": None}))
    assert load_overrides(path) == {"lr": 1e-4, "lr_milestones": [5], "nms": None}
    p = get_preset("tacos", override_file=path, overrides={"epochs": 7})
    assert (p.lr, p.lr_milestones, p.nms, p.epochs) == (1e-4, (5,), None, 7)
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": 1e-4, "dropuot": 0.1}')
    with pytest.raises(PresetError, match=r"bad\.json: unknown preset field 'dropuot'"):
        get_preset("tacos", override_file=bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"lr": 1e-4,\n "epochs": }')
    with pytest.raises(PresetError, match=r"broken\.json:2: invalid JSON"):
        load_overrides(broken)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(PresetError, match="expected a mapping"):
        load_overrides(listing)
    with pytest.raises(PresetError, match="no such override file"):
        load_overrides(tmp_path / "none.json")
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    with pytest.raises(PresetError) as err:
        load_overrides(empty)
    assert str(err.value) == f'{empty}: empty file; write a JSON object of preset fields, e.g. {{"lr": 1e-4, "epochs": 20}}'
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"lr": 1e-4}).encode())  # as some editors save it
    assert load_overrides(bom) == {"lr": 1e-4}
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(PresetError, match=r"latin\.json: not UTF-8 text"):
        load_overrides(latin)

    yml = tmp_path / "o.yaml"
    yml.write_text("lr: 1.0e-4\nlr_milestones: [5]\nuse_tef: false\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    with pytest.raises(PresetError, match="PyYAML"):
        load_overrides(yml)
    monkeypatch.undo()
    pytest.importorskip("yaml")
    p = get_preset("charades", override_file=yml)
    assert (p.lr, p.lr_milestones, p.use_tef) == (1e-4, (5,), False)
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: 1e-3\nepochs: [2\n")
    with pytest.raises(PresetError) as err:
        load_overrides(broken)
    message = str(err.value)  # one line naming the file and line, not PyYAML's "<unicode string>"
    assert message.startswith(f"{broken}:3:1: invalid YAML: expected ',' or ']'") and "\n" not in message
    assert "unicode string" not in message


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip(name):
    p = get_preset(name)
    assert Preset.from_json(p.to_json()) == p
    assert json.loads(p.to_json())["name"] == name
    with pytest.raises(PresetError, match="unknown preset field"):
        Preset.from_dict({**p.to_dict(), "extra": 1})


def test_selection_on_test_follows_eval_split():
    """``selection_on_test`` is derived from ``eval_split`` (the split fit evaluates and selects
    on), so the two can never disagree: an override that contradicts it is refused."""
    charades = get_preset("charades")
    assert charades.eval_split == "test" and charades.selection_on_test
    opted_out = charades.override({"eval_split": "val"})
    assert opted_out.eval_split == "val" and not opted_out.selection_on_test
    # the pair the older log note suggested still works; the value is checked, not stored
    both = charades.override({"eval_split": "val", "selection_on_test": "false"})
    assert both == opted_out and "selection_on_test" not in both.to_dict()
    qvh_on_test = get_preset("qvhighlights", overrides={"eval_split": "test"})
    assert qvh_on_test.selection_on_test
    for preset, value in ((charades, "false"), (get_preset("qvhighlights"), True), (opted_out, "true")):
        with pytest.raises(PresetError, match=r"selection_on_test follows eval_split.*--set eval_split=val"):
            preset.override({"selection_on_test": value})
    with pytest.raises(PresetError, match="selection_on_test: expected true or false"):
        charades.override({"selection_on_test": "maybe"})
    # preset.json written when it was a field still loads (eval_split stays the truth)
    old = {**opted_out.to_dict(), "selection_on_test": True}
    assert Preset.from_dict(old) == opted_out


def test_rules_that_the_data_applies_are_not_overridable():
    """``clip_rule`` and ``query_source`` record what the cache holds (the clips extract sampled,
    the features of each query id's text): an override to another value would be recorded in
    preset.json and do nothing, so it is refused with what to do instead; the same value and
    a saved preset load as before."""
    youtube = get_preset("youtube")
    assert youtube.override({"query_source": "title", "clip_rule": "youtube_per_clip"}) == youtube
    with pytest.raises(PresetError, match=r"query_source cannot be overridden: it records where "
                                          r"youtube's query text comes from \('title'\).*annotation file"):
        youtube.override({"query_source": "domain"})
    with pytest.raises(PresetError, match=r"clip_rule cannot be overridden: .*another --fps"):
        get_preset("custom", overrides={"clip_rule": "tvsum_rows"})
    assert Preset.from_dict(youtube.to_dict()) == youtube


def test_resolve_layers():
    p = get_preset("qvhighlights")
    assert p.resolve_layers(24) == [21, 22, 23, 24]
    assert p.override(layers=[8, 12]).resolve_layers() == [8, 12]
    with pytest.raises(PresetError, match="does not exist"):
        p.override(layers=[13]).resolve_layers()
    with pytest.raises(PresetError, match="ascending"):
        p.override(layers=[-1, -2]).resolve_layers()


def test_model_config_kwargs():
    mr = get_preset("charades").model_config_kwargs()
    assert mr["dropout"] == 0.35 and mr["strides"] == (1, 2, 4, 8) and mr["use_tef"] is True
    assert mr["fps"] == 1.0 and mr["unit"] == 0.1 and mr["nms"] == "linear"
    assert mr["sal_weight"] == 0.01 and mr["reg_weight"] == 0.2 and mr["cls_loss"] == "focal"
    assert mr["num_layers"] == 4 and mr["max_moments"] == 50 and mr["nms_threshold"] == 0.7
    assert mr["coord_head"] is True and mr["official_batch_quirks"] is True
    # the benchmarks reproduce the official training batch; custom data trains padding-invariant
    assert get_preset("custom").model_config_kwargs()["official_batch_quirks"] is False
    hd = get_preset("youtube").model_config_kwargs()
    assert hd["strides"] == (1,) and hd["use_tef"] is False and hd["coord_head"] is False
    assert hd["merge_cls_sal"] is False and hd["cls_loss"] == "dynamic_bce"
    assert hd["sal_directions"] == ("row",) and hd["fps"] is None and hd["nms"] is None
    assert get_preset("tacos").override(mask_pool="true").model_config_kwargs()["mask_pool"]
    for kwargs in (mr, hd):
        assert not {"video_dim", "query_dim", "features"} & set(kwargs)  # from the cache


def test_model_config_kwargs_build_the_model_config():
    config_module = pytest.importorskip("r2.model.config")  # the model room's R2Config
    R2Config = config_module.R2Config
    names = {f.name for f in dataclasses.fields(R2Config)}
    for name in PRESETS:
        kwargs = get_preset(name).model_config_kwargs()
        assert set(kwargs) <= names, sorted(set(kwargs) - names)
        config = R2Config(**kwargs)
        assert config.strides == get_preset(name).strides
    # every preset field that R2Config also has is handed over
    shared = names & {f.name for f in dataclasses.fields(Preset)}
    assert shared <= set(get_preset("qvhighlights").model_config_kwargs())


def test_find_data_file(tmp_path):
    p = get_preset("qvhighlights")
    (tmp_path / "highlight_val_release.jsonl").write_text("{}")
    sub = tmp_path / "qvhighlights"
    sub.mkdir()
    (sub / "qvhighlights_train.jsonl").write_text("{}")
    assert p.find_data_file(tmp_path, "val") == tmp_path / "highlight_val_release.jsonl"
    assert p.find_data_file(tmp_path, "train") == sub / "qvhighlights_train.jsonl"
    with pytest.raises(PresetError) as info:
        p.find_data_file(tmp_path, "test")
    message = str(info.value)
    assert "highlight_test_release.jsonl" in message and "moment_detr" in message
    with pytest.raises(PresetError, match="no standard 'val' annotation file"):
        get_preset("charades").find_data_file(tmp_path, "val")
    with pytest.raises(PresetError, match="not a directory"):
        p.find_data_file(tmp_path / "nowhere", "val")
    assert get_preset("charades").data_file_splits() == ("train", "test")
    yt = get_preset("youtube")
    (tmp_path / "youtube_anno.json").write_text("{}")
    assert yt.find_data_file(tmp_path, "train") == yt.find_data_file(tmp_path, "val")


def test_data_layer_modules_do_not_import_torch(tmp_path):
    code = ("import sys\n"
            "import r2.train.annotations, r2.train.presets, r2.train.targets, r2.train.splits\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
