"""CLIP loading, the shipped tokenizer, offline errors, the tiny CLIP and the feature form."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch

from r2.extract import clip as C
from r2.extract.synthetic import COLOURS
from r2.extract.tiny import make_tiny_clip


def test_shipped_tokenizer_ids():
    tok = C.load_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_long_queries_are_truncated_to_77_tokens_keeping_eot(tiny_clip):
    feats, lengths = tiny_clip.text_features(["word " * 200])
    assert lengths == [77] and feats[0].shape == (4, 77, tiny_clip.query_width)
    ids = tiny_clip.tokenize(["word " * 200])["input_ids"][0]
    assert ids[0] == 49406 and ids[-1] == 49407


def test_offline_hub_id_not_on_disk_fails_fast_with_advice():
    t0 = time.perf_counter()
    with pytest.raises(C.ModelNotFoundError) as err:
        C.FrozenCLIP("nobody-r2-test/clip-that-is-not-cached")
    msg = str(err.value)
    assert time.perf_counter() - t0 < 10
    assert "nobody-r2-test/clip-that-is-not-cached" in msg and "--model" in msg and "local" in msg
    assert getattr(err.value, "user_error", False)
    # huggingface_hub >= 1 has no `huggingface-cli`: the advice is its `hf download` command
    assert "`hf download nobody-r2-test/clip-that-is-not-cached --local-dir /path/to/clip`" in msg
    assert "huggingface-cli" not in msg


def _copy_model(src, dst, drop=(), config=None):
    import shutil

    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    if config is not None:
        (dst / "config.json").write_text(config)
    return dst


def test_incomplete_or_wrong_model_folders_are_clear_errors(tiny_clip_dir, tmp_path):
    """No weights, broken or non-CLIP config.json, damaged weights: one line naming the folder and what is wrong."""
    cases = {
        "no weights in": _copy_model(tiny_clip_dir, tmp_path / "noweights", drop=["model.safetensors"]),
        "config.json is not valid JSON": _copy_model(tiny_clip_dir, tmp_path / "badjson", config="{bad"),
        "describes a 'bert' model, not a CLIP": _copy_model(tiny_clip_dir, tmp_path / "bert",
                                                             config='{"model_type": "bert"}'),
    }
    for expected, folder in cases.items():
        with pytest.raises(C.ModelNotFoundError) as err:
            C.FrozenCLIP(folder)
        assert expected in str(err.value) and str(folder) in str(err.value), str(err.value)
        assert "\n" not in str(err.value) and err.value.user_error
    damaged = _copy_model(tiny_clip_dir, tmp_path / "damaged")
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(C.ModelError, match=r"cannot load the weights in .*damaged \(SafetensorError"):
        C.FrozenCLIP(damaged)


def test_partly_downloaded_hub_snapshot_is_a_clear_error(tiny_clip_dir, tmp_path, monkeypatch):
    """A hub cache whose snapshot has config.json but no weights (an interrupted download)."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, drop in (("org--full", []), ("org--part", ["model.safetensors"])):
        root = tmp_path / "hub" / f"models--{repo}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commit)
        _copy_model(tiny_clip_dir, root / "snapshots" / commit, drop=drop)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert C.FrozenCLIP("org/full").model_id == "org/full"
    with pytest.raises(C.ModelNotFoundError) as err:
        C.FrozenCLIP("org/part")
    msg = str(err.value)
    assert "model 'org/part' is only partly on disk" in msg and "no weights in" in msg
    assert "`hf download org/part --local-dir /path/to/clip`" in msg


def test_unusable_device_is_a_clear_error(tiny_clip_dir):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = f"cuda:{n}" if n else "cuda"  # a GPU machine: one index past the last device
    with pytest.raises(C.ModelError, match=f"--device {cuda}: " + ("there are" if n else "")):
        C.FrozenCLIP(tiny_clip_dir, device=cuda)
    with pytest.raises(C.ModelError, match="--device gpu0: not a torch device"):
        C.FrozenCLIP(tiny_clip_dir, device="gpu0")
    if not torch.backends.mps.is_available():
        with pytest.raises(C.ModelError, match="--device mps: MPS"):
            C.FrozenCLIP(tiny_clip_dir, device="mps")


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(C.ModelNotFoundError, match="no such folder"):
        C.resolve_model(str(tmp_path / "nothing" / "here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.ModelNotFoundError, match="config.json"):
        C.resolve_model(tmp_path / "empty")


def test_tiny_clip_is_seeded_and_loadable_by_plain_transformers(tiny_clip_dir, tmp_path):
    again = make_tiny_clip(tmp_path / "again", seed=0)
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert hashlib.sha256((tiny_clip_dir / name).read_bytes()).hexdigest() == \
            hashlib.sha256((again / name).read_bytes()).hexdigest(), name
    other = make_tiny_clip(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_clip_dir)
    cfg = model.config.vision_config
    assert (cfg.image_size // cfg.patch_size) ** 2 + 1 == 50 and cfg.num_hidden_layers >= 4
    assert CLIPTokenizer.from_pretrained(tiny_clip_dir)("a photo of a cat")["input_ids"][1:-1] == [320, 1125, 539, 320, 2368]
    with pytest.raises(FileExistsError):
        make_tiny_clip(again)


def _direct(model_dir, pixel_values, layers):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        hs = model.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    return torch.stack([hs[i] for i in layers], dim=1).numpy(), model


def test_vision_features_are_the_raw_hidden_states(tiny_clip, tiny_clip_dir):
    x = torch.randn(3, 3, 224, 224)
    direct, model = _direct(tiny_clip_dir, x, [1, 2, 3, 4])
    assert tiny_clip.layers == [1, 2, 3, 4]
    got = tiny_clip.video_features(x).numpy()
    assert got.shape == (3, 4, 50, 64)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the residual stream, not the post-layernormed / projected output
        normed = model.vision_model.post_layernorm(torch.from_numpy(got[:, -1])).numpy()
    assert not np.allclose(got[:, -1], normed, atol=1e-2)


def test_vision_linear_layers_run_through_onednn_on_the_cpu(tiny_clip, monkeypatch):
    # every linear layer of the vision tower (one batch shape but the last), not the text tower's
    # (their shapes follow the queries' lengths), nor any other nn.Linear
    linears = [m for m in tiny_clip.vision.modules() if type(m) is torch.nn.Linear]
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    assert tiny_clip.onednn_layers == len(linears) > 0
    assert all("forward" in vars(m) for m in linears) and "forward" not in vars(torch.nn.Linear(2, 2))
    assert not any("forward" in vars(m) for m in tiny_clip.text.modules())
    layer = linears[0]
    calls = []
    op = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(layer, "forward", C.functools.partial(
        C._onednn_linear_forward, layer, lambda *a: calls.append(1) or op(*a)))
    x = torch.randn(5, layer.in_features)
    with torch.inference_mode():
        out = layer(x)
    assert calls == [1]
    np.testing.assert_allclose(out.numpy(), torch.nn.functional.linear(x, layer.weight, layer.bias).numpy(),
                               rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --precision bf16: autocast's own product
        assert layer(x).dtype == torch.bfloat16
    assert layer(x.clone().requires_grad_()).requires_grad  # with a gradient: F.linear
    assert calls == [1]


def test_onednn_can_be_turned_off(tiny_clip_dir, monkeypatch):
    monkeypatch.setenv("R2_ONEDNN", "0")
    clip = C.FrozenCLIP(tiny_clip_dir)
    assert clip.onednn_layers == 0 and not any("forward" in vars(m) for m in clip.vision.modules())


def test_layer_choice_and_truncation(tiny_clip_dir):
    x = torch.randn(2, 3, 224, 224)
    direct, _ = _direct(tiny_clip_dir, x, [0, 2])
    clip = C.FrozenCLIP(tiny_clip_dir, layers=[0, 2])
    assert len(clip.vision.encoder.layers) == 2  # blocks 3, 4 dropped: they cannot change layers 0..2
    np.testing.assert_allclose(clip.video_features(x).numpy(), direct, rtol=1e-5, atol=1e-5)
    assert C.FrozenCLIP(tiny_clip_dir, layers=[-2, -1]).layers == [3, 4]
    # user errors (one line, shown without a traceback by the CLI), not a ValueError from deep inside
    with pytest.raises(C.ModelError, match=r"--layers 2,1: give distinct hidden-state indices in ascending"):
        C.FrozenCLIP(tiny_clip_dir, layers=[2, 1])
    with pytest.raises(C.ModelError, match=r"--layers 5: out of range 0\.\.4 for .*model"):
        C.FrozenCLIP(tiny_clip_dir, layers=[5])
    with pytest.raises(C.ModelError, match=r"--layers -6: out of range"):
        C.FrozenCLIP(tiny_clip_dir, layers=[-6])


def test_text_features_sot_to_eot_and_independent_of_padding(tiny_clip, tiny_clip_dir):
    from transformers import CLIPModel

    texts = ["a dog", "a man opens the red door of a small house"]
    feats, lengths = tiny_clip.text_features(texts)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    for text, f, n in zip(texts, feats, lengths):
        ids = C.load_tokenizer()(text, return_tensors="pt")["input_ids"]  # alone, no padding
        assert n == ids.shape[1]
        with torch.no_grad():
            hs = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states
        want = torch.stack([hs[i][0] for i in (1, 2, 3, 4)]).numpy()
        assert f.shape == want.shape == (4, n, 64)
        np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-5)


def test_tiny_features_separate_colours_and_words(tiny_clip):
    from r2.extract.preprocess import normalize

    names = ["red", "green", "blue", "yellow", "white", "black"]
    frames = np.stack([np.full((224, 224, 3), COLOURS[c], np.uint8) for c in names])
    f = tiny_clip.video_features(normalize(frames))[:, -1].mean(dim=1)  # last layer, mean over tokens
    f = torch.nn.functional.normalize(f, dim=-1)
    sim = (f @ f.T).numpy()
    off = sim[~np.eye(len(names), dtype=bool)]
    assert off.max() < 0.995, sim  # every pair of colours is told apart
    words, _ = tiny_clip.text_features(["red", "green", "blue"])
    w = torch.nn.functional.normalize(torch.stack([torch.from_numpy(x[-1, 1]) for x in words]), dim=-1)
    assert ((w @ w.T).numpy()[~np.eye(3, dtype=bool)] < 0.99).all()


def test_config_hash_ignores_runtime_keys(tiny_clip_dir, tmp_path):
    from transformers import CLIPConfig

    h = C.config_hash(CLIPConfig.from_pretrained(tiny_clip_dir))

    def variant(name, change):
        d = json.loads((tiny_clip_dir / "config.json").read_text())
        change(d)
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(d))
        return C.config_hash(CLIPConfig.from_pretrained(tmp_path / name))

    assert variant("same", lambda d: d.update(transformers_version="0.0.0", _name_or_path="x")) == h
    assert variant("deeper", lambda d: d["vision_config"].update(num_hidden_layers=3)) != h


def test_towers_of_different_depth_pair_layers_by_distance_from_the_top(tmp_path, sample_videos):
    """ViT-L/14 has 24 vision and 12 text blocks: the last 4 of each tower go together (vision
    21..24 with text 9..12). Here a tiny CLIP with 6 vision and 4 text blocks."""
    from transformers import CLIPConfig, CLIPModel

    from r2.cache import FeatureCache
    from r2.extract.pipeline import QueryJob, VideoJob, extract_features
    from r2.extract.tiny import tiny_clip_config

    cfg = tiny_clip_config(width=64, layers=4, text_width=32).to_dict()
    cfg["vision_config"]["num_hidden_layers"] = 6
    torch.manual_seed(0)
    folder = tmp_path / "deep-vision"
    CLIPModel(CLIPConfig(**cfg)).save_pretrained(folder)

    clip = C.FrozenCLIP(folder)
    assert clip.layers == [3, 4, 5, 6] and clip.query_layers == [1, 2, 3, 4]
    assert len(clip.vision.encoder.layers) == 6 and len(clip.text.encoder.layers) == 4
    feats, _ = clip.text_features(["a dog"])
    model = CLIPModel.from_pretrained(folder).eval()
    ids = C.load_tokenizer()("a dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(feats[0], torch.stack([hs[i][0] for i in (1, 2, 3, 4)]).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert C.FrozenCLIP(folder, layers=[-2, -1]).query_layers == [3, 4]
    with pytest.raises(C.ModelError, match=r"text tower of .* has 4 blocks.*keep layers 2\.\.6"):
        C.FrozenCLIP(folder, layers=[1, 2])

    summary = extract_features([VideoJob("v", str(sample_videos[0]))], [QueryJob("q", "a dog")],
                               tmp_path / "cache", folder, workers=0, clip=clip, progress=False,
                               log=lambda msg: None)
    assert summary.ok
    cache = FeatureCache.open(tmp_path / "cache")
    assert cache.manifest["layers"] == [3, 4, 5, 6] and cache.manifest["query_layers"] == [1, 2, 3, 4]
    q, mask = cache.load_query("q", layers=[5, 6])  # stored and selected by the vision layer ids
    np.testing.assert_allclose(q[:, mask], feats[0][2:], rtol=2e-3, atol=2e-3)  # float16 storage
    assert cache.load_video("v").shape[1:] == (4, 50, 64)


def test_a_shallow_clip_needs_layers_and_the_embeddings_alone_are_features(tmp_path):
    """A CLIP of 2 blocks has 3 hidden states, fewer than the 4 kept by default: said, with the
    --layers to pass, not a ValueError from inside the cache's manifest code. ``--layers 0``
    (the embeddings alone, also ``-5`` of 4 blocks) gave an IndexError: the tower was cut to no
    block, and transformers then returns no hidden states."""
    from transformers import CLIPModel

    shallow = make_tiny_clip(tmp_path / "shallow", layers=2)
    with pytest.raises(C.ModelError, match=r"^.*shallow has 2 blocks \(3 hidden states\), fewer than the 4 layers "
                       r"kept by default: pass --layers, e.g. 0,1,2$"):
        C.FrozenCLIP(shallow)
    assert C.FrozenCLIP(shallow, layers=[0, 1, 2]).layers == [0, 1, 2]
    deep = make_tiny_clip(tmp_path / "deep")
    clip = C.FrozenCLIP(deep, layers=[-5])
    assert clip.layers == [0] and clip.query_layers == [0]
    x = torch.randn(2, 3, 224, 224)
    model = CLIPModel.from_pretrained(deep).eval()
    with torch.no_grad():
        embeddings = model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[0]
    np.testing.assert_allclose(clip.video_features(x).numpy()[:, 0], embeddings.numpy(), rtol=1e-5, atol=1e-5)
    feats, _ = clip.text_features(["a dog"])
    assert feats[0].shape[0] == 1  # (K, S, Dt)


def test_make_tiny_clip_refuses_a_patch_larger_than_the_image_and_a_file_as_folder(tmp_path):
    from click.testing import CliRunner

    from r2.cli import main

    result = CliRunner().invoke(main, ["make-tiny-clip", str(tmp_path / "c"), "--image-size", "16"])
    assert result.exit_code == 1 and "Error: patch size 32 is larger than the image size 16" in result.output
    assert not (tmp_path / "c").exists()
    afile = tmp_path / "afile"
    afile.write_text("hi")
    for target, said in ((afile, f"{afile} is a file, not a folder"),
                         (afile / "x", f"{afile / 'x'}: cannot make the folder (Not a directory)")):
        for extra in ([], ["--overwrite"]):
            result = CliRunner().invoke(main, ["make-tiny-clip", str(target), *extra])
            assert result.exit_code == 1 and f"Error: {said}" in result.output, result.output
            assert "Traceback" not in result.output
    assert afile.read_text() == "hi"


@pytest.mark.parametrize("name,content,what", [
    ("preprocessor_config.json", '{"crop_size": 224, "image_mean": [0.48,', "not valid JSON: Expecting value"),
    ("preprocessor_config.json", '["not", "an", "object"]', "a JSON list, not an object"),
    ("preprocessor_config.json", '{"image_mean": "red"}', 'image_mean must be 3 numbers (R, G, B), got "red"'),
    ("preprocessor_config.json", '{"image_std": [0.2, 0.0, 0.2]}', "image_std must be 3 positive numbers"),
    ("vocab.json", '{"a": 0, "b"', "not valid JSON: Expecting ':' delimiter"),
    ("vocab.json", '{"a": "zero"}', "not a CLIP vocabulary: expected a JSON object of token -> id"),
    ("merges.txt", b"#version: 0.2\nt h\n\xff\xfe\x00garbage\n", "not UTF-8 text: invalid start byte at byte 18"),
    ("merges.txt", "#version: 0.2\nt h\n\nthree parts here\n", "line 4 is not a pair of tokens: 'three parts here'"),
    # a truncated copy: before, it tokenized "white dots" into 17 tokens instead of 7, silently
    ("merges.txt", (C.tokenizer_dir() / "merges.txt").read_bytes()[:100],
     "48877 of the 49408 tokens of vocab.json are made by none of its 17 merges, e.g. 'it': it is truncated, or of "
     "another vocabulary"),
])
def test_damaged_small_files_of_a_model_folder_are_clear_errors(tiny_clip_dir, tmp_path, name, content, what):
    """`r2 extract` with a model folder whose preprocessor config or tokenizer files are damaged (an
    interrupted copy): one line that names the file, says what is wrong and how to get it again."""
    from click.testing import CliRunner

    from r2.cli import main
    from r2.extract import synthetic as S

    model = _copy_model(tiny_clip_dir, tmp_path / "model")
    file = model / name
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    S.write_segment_video(tmp_path / "videos" / "v.mp4", [("red", 1.0)], fps=10, size=(64, 48))
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "videos"), "--out", str(tmp_path / "c"),
                                       "--model", str(model), "--workers", "0", "--no-progress"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "JSONDecodeError" not in result.output, result.output
    assert f"Error: {file} is damaged ({what}" in result.output, result.output
    assert f"`r2 make-tiny-clip {model} --overwrite`" in result.output and "hf download" in result.output
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_damaged_file_of_a_hub_snapshot_says_to_download_it_again(tiny_clip_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / "models--org--damaged"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = _copy_model(tiny_clip_dir, root / "snapshots" / commit)
    (snapshot / "preprocessor_config.json").write_text("{")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(C.ModelError) as err:
        C.FrozenCLIP("org/damaged")
    msg = str(err.value)
    assert msg.startswith(f"{snapshot / 'preprocessor_config.json'} is damaged (not valid JSON"), msg
    assert msg.endswith("download the model again with `hf download org/damaged --force-download`"), msg


def test_preprocessor_config_mean_and_std_are_read(tiny_clip_dir, tmp_path):
    model = _copy_model(tiny_clip_dir, tmp_path / "model")
    (model / "preprocessor_config.json").write_text('{"image_mean": 0.5, "image_std": [0.25, 0.5, 1]}')
    assert C.FrozenCLIP(model).image_stats() == ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
