"""Released official R²-Tuning checkpoints -> r2 checkpoints (and back).

The official repository (``yeliudev/R2-Tuning``) publishes trained models for
QVHighlights, Charades-STA, Ego4D-NLQ, TACoS and every YouTube Highlights / TVSum domain.
Their key names, shapes and module layout are in ``reference/official_state_dict.md``.

- `load_checkpoint` reads a checkpoint safely: ``torch.load(weights_only=True)``; a file
  that needs more than that is refused with the reason, and is loaded fully only with
  ``trust_checkpoint=True`` (``--trust-checkpoint``): loading a pickle can run code.
  ``.safetensors`` files are read with safetensors.
- `extract_state_dict` accepts a bare state dict or the training wrapper (a dict with
  ``state_dict`` and metadata), strips ``module.`` prefixes and drops the frozen CLIP
  (``clip.*``).
- `infer_config` reads the configuration (widths, K, TEF, strides, coordinate head, tau)
  from the keys and shapes; the data set preset (fps, rounding unit, NMS) comes from
  ``dataset`` (table `OFFICIAL_DATASETS`). The weights cannot tell the data sets apart, so
  loading a checkpoint needs ``dataset`` unless the file keeps its released name
  (``r2_tuning_<dataset>[_<domain>]-<hash>.pth``, `dataset_from_filename`).
- Strict: every official key maps to exactly one r2 key and back (`official_key_map`);
  unknown, missing and mis-shaped keys are a `OfficialCheckpointError` listing them.

Usage: ``R2Model.from_official(path, dataset="qvhighlights")`` or
``r2 convert-official CKPT --out RUN_DIR --dataset qvhighlights``.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from r2.fileio import atomic_write

from .config import R2Config, R2ModelError

# Decoding (and training) settings of the released configurations, per data set
# (reference r2tuning.md §3.4, §4.6, §5.2). r2.train.presets must agree: the lead reconciles.
# fps None = per video (YouTube Highlights: one frame per annotated segment).
OFFICIAL_DATASETS: dict[str, dict] = {
    "qvhighlights": dict(fps=0.5, unit=2.0, nms="normal", nms_threshold=0.7, dropout=0.5, sal_weight=0.1),
    "charades": dict(fps=1.0, unit=0.1, nms="linear", nms_threshold=0.7, dropout=0.35, sal_weight=0.01),
    "ego4d": dict(fps=0.5, unit=None, nms="linear", nms_threshold=0.7, dropout=0.3, sal_weight=0.1),
    "tacos": dict(fps=0.5, unit=None, nms="linear", nms_threshold=0.7, dropout=0.5, sal_weight=0.05),
    "youtube": dict(fps=None, unit=None, nms=None, nms_threshold=0.7, dropout=0.5, sal_weight=0.1),
    "tvsum": dict(fps=0.5, unit=None, nms=None, nms_threshold=0.7, dropout=0.5, sal_weight=0.1),
}
MOMENT_RETRIEVAL_DATASETS = ("qvhighlights", "charades", "ego4d", "tacos")

# The released files keep the data set in their name: r2_tuning_<dataset>[_<domain>]-<hash>.pth
# (README model zoo, e.g. r2_tuning_charades-1de02112.pth, r2_tuning_youtube_dog-702bd293.pth).
_RELEASED_NAME = re.compile(rf"^r2_tuning_({'|'.join(OFFICIAL_DATASETS)})(?:_[a-z]+)?(?:-[0-9a-f]+)?$")

# CLIP visual width -> hub id of the backbone the official features come from. The
# released checkpoints all use ViT-B/32 (B/16 has the same widths and cannot be told apart).
_CLIP_BY_VISUAL_WIDTH = {768: "openai/clip-vit-base-patch32", 1024: "openai/clip-vit-large-patch14"}
_CLIP_NUM_LAYERS = 12  # hidden states 1..12 of the text / ViT-B towers (features: the last K)


class OfficialCheckpointError(R2ModelError):
    """An official checkpoint that cannot be read or converted (the message says why)."""


# --------------------------------------------------------------------------- reading


def load_checkpoint(path, trust_checkpoint: bool = False):
    """The raw object stored in `path` (weights only unless `trust_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise OfficialCheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _weights_only_reason(exc)
        if not _looks_like_torch_save(path):  # random bytes also fail the unpickler: say so, not "trust it"
            raise OfficialCheckpointError(
                f"cannot read {path}: not a torch.save file, or a damaged one ({reason}); download the "
                "checkpoint again") from exc
        if not trust_checkpoint:
            raise OfficialCheckpointError(
                f"{path}: torch.load(weights_only=True) refused this file ({reason}). Checkpoints are "
                "pickles and loading one fully can execute code stored in it. If you trust the source "
                "of this file, re-run with --trust-checkpoint (trust_checkpoint=True)") from exc
    except Exception as exc:
        raise OfficialCheckpointError(
            f"cannot read {path}: not a torch.save file, or a damaged one ({type(exc).__name__}: {exc}); "
            "download the checkpoint again") from exc
    try:  # explicitly trusted by the caller
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise OfficialCheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle stream (the legacy format, opcode PROTO)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


# The unpickler's own refusal inside torch's message ("Unsupported global: GLOBAL
# argparse.Namespace was not an allowed global ...", "Trying to load unsupported GLOBAL
# posix.system whose module posix is blocked.", "Unsupported operand 149", ...).
_REFUSAL = re.compile(r"(?:WeightsUnpickler error:\s*)?((?:Unsupported|Trying to load|Can only)\b.*)", re.S)


def _weights_only_reason(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in one sentence (naming the global).

    torch wraps the unpickler's error in general advice about ``weights_only`` and keeps the
    original as ``__context__``; the reason is the original's first sentence, else the
    paragraph of torch's text that holds it.
    """
    inner = exc.__context__
    if isinstance(inner, pickle.UnpicklingError) and str(inner).strip():
        reason = str(inner)
    else:
        text = str(exc)
        found = (_REFUSAL.match(part.strip()) for part in re.split(r"\n\s*\n|\n\t", text))
        reason = next((m.group(1) for m in found if m), None)
        if reason is None:
            lines = text.strip().splitlines()
            reason = lines[0] if lines else type(exc).__name__
    reason = " ".join(reason.split())
    sentence = re.match(r"(.+?)\.(?:\s|$)", reason)  # the dot of "argparse.Namespace" ends nothing
    return (sentence.group(1) if sentence else reason)[:300]


def extract_state_dict(obj) -> dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint: unwrap, strip ``module.``, drop ``clip.*``."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and not inner:
                raise OfficialCheckpointError(f"its {wrapper!r} is empty: the checkpoint holds no weights")
            if isinstance(inner, dict) and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise OfficialCheckpointError(
            f"expected a state dict or a dict holding 'state_dict', got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise OfficialCheckpointError(f"state dict key {key!r} is not a string")
        while key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("clip."):  # the frozen CLIP is never part of an r2 model
            continue
        if key in state:
            raise OfficialCheckpointError(f"key {key} appears twice (with and without 'module.')")
        state[key] = value
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise OfficialCheckpointError(f"these entries are not tensors: {', '.join(bad)}")
    return state


# --------------------------------------------------------------------------- key map


_STATIC_RULES = [  # r2 prefix -> official prefix (applied to the start of a key)
    ("block.video_mlp.norm_in.", "adapter.video_map.0."),
    ("block.video_mlp.fc_in.", "adapter.video_map.2."),
    ("block.video_mlp.norm_hidden.", "adapter.video_map.4."),
    ("block.video_mlp.fc_out.", "adapter.video_map.6."),
    ("block.query_mlp.norm_in.", "adapter.query_map.0."),
    ("block.query_mlp.fc_in.", "adapter.query_map.2."),
    ("block.query_mlp.norm_hidden.", "adapter.query_map.4."),
    ("block.query_mlp.fc_out.", "adapter.query_map.6."),
    ("block.pool_key.", "adapter.v_map."),
    ("block.pool_query.", "adapter.q_map."),
    ("block.temporal.cross_attn.q_proj.", "adapter.tem.cross_att.q."),
    ("block.temporal.cross_attn.k_proj.", "adapter.tem.cross_att.k."),
    ("block.temporal.cross_attn.v_proj.", "adapter.tem.cross_att.v."),
    ("block.temporal.cross_attn.out_proj.", "adapter.tem.cross_att.m."),
    ("block.temporal.cross_norm.", "adapter.tem.cross_att_norm."),
    ("block.temporal.self_attn.q_proj.", "adapter.tem.self_att.q."),
    ("block.temporal.self_attn.k_proj.", "adapter.tem.self_att.k."),
    ("block.temporal.self_attn.v_proj.", "adapter.tem.self_att.v."),
    ("block.temporal.self_attn.out_proj.", "adapter.tem.self_att.m."),
    ("block.temporal.self_norm.", "adapter.tem.self_att_norm."),
    ("block.temporal.ffn.fc1.", "adapter.tem.ffn.mapping.0."),
    ("block.temporal.ffn.fc2.", "adapter.tem.ffn.mapping.2."),
    ("block.temporal.ffn_norm.", "adapter.tem.ffn_norm."),
    ("query_pool.score.", "pooling.att."),
    ("class_head.conv1.", "class_head.module.1."),
    ("class_head.conv2.", "class_head.module.3."),
    ("coord_head.conv1.", "coord_head.module.1."),
    ("coord_head.conv2.", "coord_head.module.3."),
]
_EXACT_RULES = {
    "block.gate": "adapter.gate",
    "block.pool_scale": "adapter.scale",
    "coord_scale": "coef",
    "criterion.sal_log_scale": "loss._loss_sal.scale",
}
# pyramid level i, DownBlock j: official Sequential [Permute, Conv1d, Permute, LayerNorm, ReLU] x p
_PYRAMID = re.compile(r"^pyramid\.levels\.(\d+)\.(\d+)\.(conv|norm)\.(weight|bias)$")


def official_key(r2_key: str) -> str:
    """The official name of an r2 state-dict key."""
    if r2_key in _EXACT_RULES:
        return _EXACT_RULES[r2_key]
    m = _PYRAMID.match(r2_key)
    if m:
        level, block, kind, leaf = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        return f"pyramid.blocks.{level}.{5 * block + (1 if kind == 'conv' else 3)}.{leaf}"
    for mine, theirs in _STATIC_RULES:
        if r2_key.startswith(mine):
            return theirs + r2_key[len(mine):]
    raise OfficialCheckpointError(f"r2 key {r2_key} has no official counterpart")


def official_key_map(config: R2Config) -> dict[str, str]:
    """r2 key -> official key for every state-dict entry of `R2Model(config)` (a bijection)."""
    from .model import R2Model

    with torch.device("meta"):
        keys = list(R2Model(config).state_dict())
    mapping = {k: official_key(k) for k in keys}
    if len(set(mapping.values())) != len(mapping):  # pragma: no cover - guarded by tests
        raise OfficialCheckpointError("the official key map is not one-to-one")
    return mapping


# --------------------------------------------------------------------------- config


def _shape(state, key):
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor], dataset: str | None = None, num_heads: int = 8,
                 use_tef: bool | None = None) -> R2Config:
    """The R2Config of an official state dict (official names, already unwrapped).

    The number of attention heads is not stored in the weights (official: 8). TEF adds 2 to
    the video input width; it is inferred from the known CLIP widths (768, 1024) unless
    `use_tef` is given. dataset None: the architecture only, with R2Config's default
    decoding settings (`load_official_model` never builds a model from that).
    """
    required = ["adapter.v_map.weight", "adapter.scale", "adapter.query_map.0.weight",
                "adapter.video_map.0.weight", "adapter.tem.ffn.mapping.0.weight", "coef",
                "class_head.module.3.weight"]
    missing = [k for k in required if k not in state]
    if missing:
        raise OfficialCheckpointError(
            "not an official R²-Tuning state dict: missing keys " + ", ".join(missing)
            + f" (it has {len(state)} keys, e.g. {', '.join(sorted(state)[:5])})")
    hidden = _shape(state, "adapter.v_map.weight")[0]
    num_layers = _shape(state, "adapter.scale")[0]
    query_dim = _shape(state, "adapter.query_map.0.weight")[0]
    video_in = _shape(state, "adapter.video_map.0.weight")[0]
    if use_tef is None:
        if video_in - 2 in _CLIP_BY_VISUAL_WIDTH:
            use_tef = True
        elif video_in in _CLIP_BY_VISUAL_WIDTH:
            use_tef = False
        else:
            raise OfficialCheckpointError(
                f"adapter.video_map.0.weight has width {video_in}, which matches no known CLIP visual "
                f"width {sorted(_CLIP_BY_VISUAL_WIDTH)} with or without the 2 TEF channels: name the CLIP model "
                "it reads (`r2 convert-official --model`), or pass use_tef")
    video_dim = video_in - 2 if use_tef else video_in
    ffn_hidden = _shape(state, "adapter.tem.ffn.mapping.0.weight")[0]
    if ffn_hidden % hidden:
        raise OfficialCheckpointError(f"FFN width {ffn_hidden} is not a multiple of the hidden width {hidden}")
    num_levels = _shape(state, "coef")[0]
    strides = []
    for level in range(num_levels):
        convs = [k for k in state if re.match(rf"^pyramid\.blocks\.{level}\.\d+\.weight$", k)
                 and state[k].dim() == 3]
        strides.append(2 ** len(convs))
    coord_head = any(k.startswith("coord_head.") for k in state)
    tau = 0.07
    if "loss._loss_sal.scale" in state:
        tau = float(math.exp(-float(state["loss._loss_sal.scale"].reshape(-1)[0])))

    if dataset is not None:
        dataset = dataset.lower()
        if dataset not in OFFICIAL_DATASETS:
            raise OfficialCheckpointError(f"unknown data set {dataset!r}; one of {', '.join(OFFICIAL_DATASETS)}")
        if coord_head != (dataset in MOMENT_RETRIEVAL_DATASETS):
            kind = "a moment-retrieval" if coord_head else "a highlight-detection (TVSum/YouTube)"
            raise OfficialCheckpointError(f"this checkpoint is {kind} model (coordinate head "
                                          f"{'present' if coord_head else 'absent'}), not one for {dataset}")
    variant = {} if coord_head else dict(
        cls_loss="dynamic_bce" if tuple(strides) == (1,) else "focal", sal_directions=("row",),
        merge_cls_sal=False, unit=None, nms=None)
    settings = dict(OFFICIAL_DATASETS[dataset]) if dataset else {}
    fps = settings.get("fps", variant.get("fps", 0.5))
    features = {
        "model_id": _CLIP_BY_VISUAL_WIDTH.get(video_dim, "unknown"),
        "layers": list(range(_CLIP_NUM_LAYERS - num_layers + 1, _CLIP_NUM_LAYERS + 1)),
        "fps": fps,
    }
    try:
        return R2Config(video_dim=video_dim, query_dim=query_dim, num_layers=num_layers, hidden_dim=hidden,
                        num_heads=num_heads, ffn_ratio=ffn_hidden // hidden, use_tef=use_tef,
                        strides=tuple(strides), coord_head=coord_head, tau=tau,
                        **{**variant, **settings}, features=features)
    except R2ModelError as exc:
        raise OfficialCheckpointError(f"the checkpoint's shapes match no valid configuration: {exc}") from exc


# --------------------------------------------------------------------------- data set


def dataset_from_filename(path) -> str | None:
    """The data set of a checkpoint that keeps its released name, else None.

    ``r2_tuning_charades-1de02112.pth`` -> "charades", ``r2_tuning_tvsum_bk-45b59440.pth`` ->
    "tvsum"; any other name -> None.
    """
    match = _RELEASED_NAME.match(Path(path).name.split(".")[0].lower())
    return match.group(1) if match else None


def _resolve_dataset(path, dataset: str | None) -> tuple[str, str]:
    """(`dataset` if given, else the one in the released file name; where it came from:
    "given" or "file name"); an error otherwise.

    The weights cannot tell: the QVHighlights, Charades-STA, Ego4D and TACoS models have the
    same keys and shapes (so have YouTube and TVSum), yet their fps, rounding unit and NMS
    differ, and a silent default would decode every data set but one wrongly.
    """
    found = dataset_from_filename(path)
    if dataset is not None:
        if found is not None and found != dataset.lower():
            warnings.warn(f"{Path(path).name}: its released name says {found}, --dataset (dataset=...) says "
                          f"{dataset.lower()}: converting it as {dataset.lower()} (fps, rounding unit and NMS "
                          f"of {dataset.lower()})", stacklevel=3)
        return dataset.lower(), "given"
    if found is None:
        raise OfficialCheckpointError(
            f"{path}: cannot tell which data set this checkpoint was trained on (its weights do not say "
            "and its name is not a released one, r2_tuning_<dataset>-<hash>.pth); pass --dataset (dataset=...), "
            f"one of {', '.join(OFFICIAL_DATASETS)}: it sets fps, rounding unit and NMS")
    return found, "file name"


# --------------------------------------------------------------------------- conversion


def from_official_state_dict(state: dict[str, torch.Tensor], config: R2Config) -> dict[str, torch.Tensor]:
    """Rename an official state dict to r2 keys, strictly (keys and shapes)."""
    from .model import R2Model

    mapping = official_key_map(config)
    reverse = {v: k for k, v in mapping.items()}
    with torch.device("meta"):
        expected = R2Model(config).state_dict()
    unknown = sorted(set(state) - set(reverse))
    missing = sorted(set(reverse) - set(state))
    shapes = sorted(f"{k}: {tuple(state[k].shape)}, expected {tuple(expected[reverse[k]].shape)}"
                    for k in set(state) & set(reverse)
                    if tuple(state[k].shape) != tuple(expected[reverse[k]].shape))
    if unknown or missing or shapes:
        parts = []
        if unknown:
            parts.append("unknown keys: " + ", ".join(unknown))
        if missing:
            parts.append("missing keys: " + ", ".join(missing))
        if shapes:
            parts.append("shapes that match no configuration: " + "; ".join(shapes))
        raise OfficialCheckpointError(
            "the checkpoint does not match the official R²-Tuning layout inferred from it "
            f"(K={config.num_layers}, C={config.hidden_dim}, strides={config.strides}, "
            f"TEF={config.use_tef}, coordinate head={config.coord_head}): " + " | ".join(parts))
    damaged = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if damaged:
        raise OfficialCheckpointError(
            f"{len(damaged)} weight tensor(s) hold NaN or infinite values ({', '.join(damaged[:5])}"
            + (", ..." if len(damaged) > 5 else "") + "): the checkpoint is damaged, or of a run that diverged")
    return {reverse[k]: v.detach().clone().float() for k, v in state.items()}


def to_official_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict of an r2 model under the official key names (the way back)."""
    mapping = official_key_map(model.config)
    return {mapping[k]: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_official_model(path, dataset: str | None = None, trust_checkpoint: bool = False):
    """An `R2Model` (eval mode) holding the weights of an official checkpoint.

    dataset: the data set it was trained on (sets fps, rounding unit, NMS); None = read from
    the released file name (``r2_tuning_<dataset>-<hash>.pth``), an error if it is not one.
    """
    return _load_official(path, dataset, trust_checkpoint)[0]


def _load_official(path, dataset: str | None, trust_checkpoint: bool, clip: Mapping | None = None):
    """(model, data set, where the data set came from) of an official checkpoint; ``clip``: as
    in :func:`convert_official` (its width tells whether the video input has the 2 TEF channels)."""
    from .model import R2Model

    state = extract_state_dict(load_checkpoint(path, trust_checkpoint=trust_checkpoint))
    use_tef = None
    if clip is not None and "adapter.video_map.0.weight" in state:
        video_in, width = _shape(state, "adapter.video_map.0.weight")[0], int(clip["video_width"])
        if video_in not in (width, width + 2):
            raise OfficialCheckpointError(
                f"{path}: its video input has width {video_in}, and the CLIP model {clip['model_id']} gives features "
                f"of width {width} ({width + 2} with the 2 TEF channels): the checkpoint was trained on another CLIP")
        use_tef = video_in == width + 2
    weights = from_official_state_dict(state, infer_config(state, use_tef=use_tef))  # the file's own errors first
    dataset, dataset_source = _resolve_dataset(path, dataset)
    try:
        config = infer_config(state, dataset=dataset, use_tef=use_tef)
    except OfficialCheckpointError as exc:
        if dataset_source != "file name":
            raise
        raise OfficialCheckpointError(f"{path}: {exc} (data set {dataset!r} read from the file name "
                                      f"{Path(path).name}; pass --dataset to choose)") from exc
    if clip is not None:
        config = config.replace(features=_clip_features(clip, config, path))
    model = R2Model(config)
    model.load_state_dict_strict(weights, source=str(path))
    return model.eval(), dataset, dataset_source


def _clip_features(clip: Mapping, config, path) -> dict:
    """The ``features`` of a converted model that reads ``clip``'s features: its identity, its
    last K layers (the official features are the last K of each tower), the data set's fps."""
    if int(clip["query_width"]) != config.query_dim:
        raise OfficialCheckpointError(
            f"{path}: its query input has width {config.query_dim}, and the CLIP model {clip['model_id']} gives "
            f"query features of width {clip['query_width']}: the checkpoint was trained on another CLIP")
    depth = int(clip["num_layers"])
    if depth < config.num_layers:
        raise OfficialCheckpointError(f"{path}: the checkpoint reads {config.num_layers} layers and the CLIP model "
                                      f"{clip['model_id']} has {depth}")
    features = {k: clip[k] for k in ("model_id", "model_weights_hash", "model_config_hash") if clip.get(k)}
    features["layers"] = list(range(depth - config.num_layers + 1, depth + 1))
    features["fps"] = (config.features or {}).get("fps", config.fps)
    return features


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """What :func:`convert_official` wrote: where from (``source``, its ``sha256``), the data set
    and how it was known (``dataset_source``: "given" or "file name"), and the converted model."""

    source: str
    sha256: str
    dataset: str
    dataset_source: str
    trainable_parameters: int
    config: dict  # R2Config.to_dict()
    out_dir: str

    def record(self) -> dict:
        """The ``official_source.json`` of the run directory."""
        return {k: getattr(self, k) for k in ("source", "sha256", "dataset", "dataset_source", "trainable_parameters")}


OFFICIAL_SOURCE_NAME = "official_source.json"  # what convert_official writes beside the weights: where from
_FIT_RUN_FILES = ("checkpoints", "metrics.jsonl", "best.json", "preset.json")  # what r2 fit writes beside the weights


def convert_official(checkpoint, out_dir, dataset: str | None = None, trust_checkpoint: bool = False,
                     overwrite: bool = False, clip: Mapping | None = None) -> ConvertedCheckpoint:
    """Convert an official checkpoint into an r2 run directory (config.json + model.safetensors).

    dataset: as in `load_official_model` (given, or read from the released file name).
    clip: the CLIP model whose features the converted model reads, as
    ``r2.extract.clip.describe_clip`` describes a local copy (``model_id``,
    ``model_weights_hash``, ``model_config_hash``, ``video_width``, ``query_width``,
    ``num_layers``): recorded as its ``features``, so caches extracted or imported with that
    model, from any folder, match it by its weights. Without it the features name the hub id
    of the CLIP of the release's width (``openai/clip-vit-base-patch32``), which a cache made
    from a local folder does not match. Its widths must be the checkpoint's.
    Also writes ``official_source.json`` (source path, sha256, data set and where it came
    from). Returns a :class:`ConvertedCheckpoint`.
    """
    from .model import WEIGHTS_NAME

    out_dir = Path(out_dir)
    trained = [name for name in _FIT_RUN_FILES if (out_dir / name).exists()]
    if trained:  # --force would leave them beside the converted weights, as if they were of it
        raise OfficialCheckpointError(f"{out_dir} holds a run of r2 fit ({', '.join(trained)}): convert into "
                                      "another folder (--force replaces only a model converted before)")
    if (out_dir / WEIGHTS_NAME).exists() and not overwrite:
        raise OfficialCheckpointError(f"{out_dir / WEIGHTS_NAME} exists; pass --force (overwrite=True) to replace it")
    model, dataset, dataset_source = _load_official(checkpoint, dataset, trust_checkpoint, clip)
    model.save_pretrained(out_dir)
    sha = hashlib.sha256()
    with open(checkpoint, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    converted = ConvertedCheckpoint(str(Path(checkpoint).resolve()), sha.hexdigest(), dataset, dataset_source,
                                    model.num_trainable_parameters(), model.config.to_dict(), str(out_dir))
    atomic_write(out_dir / OFFICIAL_SOURCE_NAME, json.dumps(converted.record(), indent=2) + "\n")
    return converted


__all__ = ["OFFICIAL_DATASETS", "OfficialCheckpointError", "load_checkpoint", "extract_state_dict",
           "official_key", "official_key_map", "infer_config", "dataset_from_filename",
           "from_official_state_dict", "to_official_state_dict", "load_official_model", "convert_official",
           "ConvertedCheckpoint"]
