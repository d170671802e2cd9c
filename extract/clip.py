"""Frozen Hugging Face CLIP: loading (hub id or local folder, offline-safe), layer selection,
vision and text features in the form the R² Block consumes, and the shipped tokenizer.

Features (r2tuning.md §1.2, §10 item 1)
---------------------------------------
- Vision: ``CLIPVisionModel(..., output_hidden_states=True).hidden_states`` has L + 1 entries
  (entry 0 = embeddings after ``pre_layrnorm``, entry i = output of block i: the raw residual
  stream, before ``post_layernorm`` and the projection). Kept: the chosen indices (default the
  last four, 9–12 for a 12-layer ViT), **all tokens** (CLS + patches): ``(B, K, N, D)``.
- Text: the same indices of the text tower's hidden states (before ``final_layer_norm`` and
  ``text_projection``), tokens SOT … EOT only (``[:attention_mask.sum()]``; the causal mask keeps
  them independent of padding): ``(K, S, Dt)`` per query.
- Blocks after the highest kept layer are dropped at load time (they cannot change the kept
  hidden states), so ``--layers 6,7,8,9`` costs 9 blocks, not 12.
- Precision: ``fp32`` (default: the official features, stored as fp16 by the cache), ``bf16``
  or ``fp16`` autocast (faster; error measured by bench/extract.py and stated in the README).

Tokenizer: the CLIP BPE vocabulary ships in the package (``r2/assets/clip-tokenizer``) and is
loaded as ``CLIPTokenizer(vocab=dict, merges=list)``; transformers 5.x silently builds a
2-token vocabulary from ``vocab_file=``/``merges_file=``, so those are never used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from r2 import onednn
from r2.cache import default_layers

__all__ = [
    "FrozenCLIP",
    "ModelError",
    "ModelNotFoundError",
    "check_device",
    "config_hash",
    "describe_clip",
    "weights_hash",
    "load_tokenizer",
    "onednn_linears",
    "resolve_model",
    "tokenizer_dir",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelError(Exception):
    """A model that cannot be used as asked: a folder without config or weights, a config that
    is not CLIP, ``--layers`` it does not have, a ``--device`` torch cannot use."""

    user_error = True


class ModelNotFoundError(ModelError):
    """A ``--model`` that is neither a local folder nor a hub id available on disk (or only
    part of it is)."""


def tokenizer_dir() -> Path:
    """The shipped CLIP tokenizer files (vocab.json, merges.txt, LICENSE)."""
    import r2

    return Path(r2.__file__).resolve().parent / "assets" / "clip-tokenizer"


_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(folder: str | os.PathLike | None = None):
    """A ``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt`` in ``folder`` (default: shipped).

    "a photo of a cat" → [49406, 320, 1125, 539, 320, 2368, 49407] (tests/extract checks it).
    """
    from transformers import CLIPTokenizer

    shipped = folder is None
    folder = Path(folder) if folder is not None else tokenizer_dir()
    key = str(folder.resolve())
    if key not in _TOKENIZERS:
        vocab = _read_json(folder / "vocab.json", shipped)
        if not vocab or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                for k, v in vocab.items()):
            raise _damaged(folder / "vocab.json", "not a CLIP vocabulary: expected a JSON object of token -> id",
                           shipped)
        merges = []
        for lineno, line in enumerate(_read_text(folder / "merges.txt", shipped).splitlines(), 1):
            if not line.strip() or line.startswith("#version"):
                continue
            pair = tuple(line.split())
            if len(pair) != 2:
                raise _damaged(folder / "merges.txt", f"line {lineno} is not a pair of tokens: {line[:60]!r}",
                               shipped)
            merges.append(pair)
        made = {a + b for a, b in merges}  # a BPE vocabulary: the single characters, the specials, the merges
        orphans = [t for t in vocab if t not in made and len(t.removesuffix("</w>")) > 1 and not t.startswith("<|")]
        if orphans:  # a truncated merges.txt tokenizes silently into other (more, shorter) tokens
            raise _damaged(folder / "merges.txt", f"{len(orphans)} of the {len(vocab)} tokens of vocab.json are made "
                           f"by none of its {len(merges)} merges, e.g. {orphans[0]!r}: it is truncated, or of "
                           "another vocabulary", shipped)
        try:
            tok = CLIPTokenizer(vocab=vocab, merges=merges)
        except Exception as exc:  # the tokenizers library refuses them (a merge of unknown tokens, ...)
            raise _damaged(folder, f"vocab.json and merges.txt do not make a tokenizer ({type(exc).__name__}: "
                           f"{_first_line(exc)})", shipped) from None
        if len(tok) != len(vocab):
            raise RuntimeError(f"CLIP tokenizer from {folder} has {len(tok)} tokens, expected {len(vocab)}")
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def _damaged(file: Path, what: str, shipped: bool = False) -> "ModelError":
    """The error for a damaged file of a model folder (or of the shipped tokenizer): the file,
    what is wrong with it, and how to get a good copy."""
    if shipped:
        return ModelError(f"{file} is damaged ({what}): this file ships with r2; reinstall it "
                          "(pip install --force-reinstall r2-vtg, or `pip install -e .` in a checkout)")
    folder = file if file.is_dir() else file.parent
    hub_id = _hub_id_of_snapshot(folder)
    if hub_id is not None:
        return ModelError(f"{file} is damaged ({what}): download the model again with `hf download {hub_id} "
                          "--force-download`")
    return ModelError(f"{file} is damaged ({what}): download the model into {folder} again (`hf download "
                      f"<hub id> --local-dir {folder}`), or, for a tiny test model, make it again with "
                      f"`r2 make-tiny-clip {folder} --overwrite`")


def _hub_id_of_snapshot(folder: Path) -> str | None:
    """``org/name`` when ``folder`` is a snapshot in the Hugging Face cache
    (``.../models--org--name/snapshots/<commit>``), else None."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return None


def _read_text(file: Path, shipped: bool = False) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _damaged(file, f"not UTF-8 text: {exc.reason} at byte {exc.start}", shipped) from None
    except OSError as exc:
        raise _damaged(file, f"cannot be read: {exc.strerror or exc}", shipped) from None


def _read_json(file: Path, shipped: bool = False) -> dict:
    """A JSON object from ``file``, or a :class:`ModelError` naming the file and the damage."""
    text = _read_text(file, shipped)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(file, f"not valid JSON: {exc}", shipped) from None
    if not isinstance(data, dict):
        raise _damaged(file, f"a JSON {type(data).__name__}, not an object", shipped)
    return data


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _download_hint(model_id: str) -> str:
    return (f"pass a local folder instead: --model /path/to/clip (a folder with config.json and "
            f"model.safetensors, e.g. made on a machine with network by `hf download {model_id} "
            f"--local-dir /path/to/clip`), or make a small random one with `r2 make-tiny-clip DIR`")


def _folder_problem(path: Path) -> str | None:
    """What keeps ``path`` from being a loadable CLIP folder (one line), or None."""
    config = path / "config.json"
    if not config.is_file():
        return f"no config.json in {path} (a Hugging Face CLIP folder holds config.json and model.safetensors)"
    try:
        d = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{config} is not valid JSON ({exc})"
    if not isinstance(d, dict) or d.get("model_type", "clip") != "clip" or "vision_config" not in d \
            or "text_config" not in d:
        kind = d.get("model_type") if isinstance(d, dict) else None
        return (f"{config} describes {'a ' + repr(kind) + ' model' if kind else 'no model'}, not a CLIP with both "
                "towers (model_type 'clip', vision_config and text_config)")
    if not any((path / name).is_file() for name in _WEIGHTS):
        return f"no weights in {path} (model.safetensors or pytorch_model.bin next to config.json)"
    return None


def resolve_model(model: str | os.PathLike) -> Path:
    """A local CLIP folder (config.json + weights) for ``model``: a folder, or a hub id on disk.

    A hub id that is not cached (or only partly: an interrupted download) is downloaded only
    when the hub is online; offline (``HF_HUB_OFFLINE=1``) or without network this fails at
    once with a message that names the model and says how to pass a local folder.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        problem = _folder_problem(path)
        if problem:
            raise ModelNotFoundError(f"--model {text}: {problem}")
        return path.resolve()
    if path.exists():
        raise ModelNotFoundError(f"--model {text}: is a file; pass the folder that holds config.json and "
                                 "model.safetensors")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    if looks_like_path:
        raise ModelNotFoundError(f"--model {text}: no such folder")
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:
        local = Path(snapshot_download(text, local_files_only=True, allow_patterns=patterns))
    except Exception:
        problem = "is not on disk"
    else:
        problem = _folder_problem(local)
        if problem is None:
            return local
        problem = f"is only partly on disk ({problem}: an interrupted download?)"
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(f"model '{text}' {problem} and the Hugging Face hub is offline (HF_HUB_OFFLINE=1): "
                                 f"{_download_hint(text)}")
    try:
        local = Path(snapshot_download(text, allow_patterns=patterns, etag_timeout=5))
    except Exception as exc:
        raise ModelNotFoundError(f"model '{text}' {problem} and could not be downloaded ({type(exc).__name__}): "
                                 f"{_download_hint(text)}") from None
    problem = _folder_problem(local)
    if problem:
        raise ModelNotFoundError(f"model '{text}': {problem}")
    return local


def _open_config(model: str | os.PathLike):
    """``(folder, CLIPConfig, model id)`` of ``model`` (a folder, or a hub id on disk); the id is
    the folder's absolute path for a folder, the hub id as given for one."""
    from transformers import CLIPConfig

    path = resolve_model(model)
    try:
        config = CLIPConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"--model {os.fspath(model)}: cannot read the CLIP config in {path} "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    model_id = str(path) if Path(os.fspath(model)).expanduser().exists() else os.fspath(model)
    return path, config, model_id


def describe_clip(model: str | os.PathLike) -> dict:
    """What a checkpoint records of the CLIP whose features it reads, from the folder's files
    (the weights are hashed, not loaded): ``model_id`` (the folder, or the hub id as given),
    ``model_weights_hash``, ``model_config_hash`` (as ``r2 extract`` records them), the widths
    ``video_width`` and ``query_width``, and ``num_layers``, the depth of the vision tower."""
    path, config, model_id = _open_config(model)
    return {"model_id": model_id, "model_weights_hash": weights_hash(path),
            "model_config_hash": config_hash(config), "video_width": config.vision_config.hidden_size,
            "query_width": config.text_config.hidden_size, "num_layers": config.vision_config.num_hidden_layers}


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a :class:`ModelError` saying why torch cannot use it here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)")
            raise ModelError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"--device {device}: there are {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device}: MPS (Apple GPU) is not available to this torch; use --device cpu")
    return dev


_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "_commit_hash",
             "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal",
             "output_hidden_states", "return_dict", "output_attentions", "use_cache"}


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in sorted(obj.items()) if k not in _VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    return obj


def config_hash(config) -> str:
    """sha256 (16 hex) of the model config without run-time keys (dtype, version, paths)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    blob = json.dumps(_stable(d), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_hash(path: Path) -> str | None:
    """sha256 (first 16 hex digits) of the weight file(s) transformers loads from the CLIP folder
    ``path``: ``model.safetensors`` (``sha256sum model.safetensors`` gives the same digits), else
    the shards its index lists, concatenated in name order, else ``pytorch_model.bin`` (...).
    The identity of the model wherever the folder lies; None when there are no weights."""
    for name in _WEIGHTS:
        file = path / name
        if not file.is_file():
            continue
        files = [file]
        if name.endswith(".index.json"):
            try:
                shards = json.loads(file.read_text(encoding="utf-8"))["weight_map"].values()
                files = [path / shard for shard in sorted(set(shards))]
            except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError) as exc:
                raise ModelError(f"{file} is damaged ({type(exc).__name__}: {_first_line(exc)}): it should "
                                 "map every weight to its shard file") from None
        digest = hashlib.sha256()
        for f in files:
            try:
                with open(f, "rb") as fh:
                    while chunk := fh.read(8 << 20):
                        digest.update(chunk)
            except OSError as exc:
                raise ModelError(f"cannot read the weights {f} ({exc.strerror or exc})") from None
        return digest.hexdigest()[:16]
    return None


def onednn_linears(module: torch.nn.Module) -> int:
    """Route the float32 CPU products of every ``nn.Linear`` of ``module`` (in inference: the
    layers of a frozen model) through oneDNN; other devices, types, autocast and gradients keep
    ``F.linear``. torch's own float32 CPU products call MKL, whose AVX-512 code is for Intel
    processors (on a 2-core AMD EPYC with AVX-512 it runs at the AVX2 rate); oneDNN chooses its
    kernels by the instruction set (there, CLIP ViT-B/32's vision tower on 128 frames: 7.0 s vs
    3.5 s; ``bench/matmul.py`` prints the ratios per product). oneDNN keeps the kernels it builds, one per shape of product
    (about 0.6 MB each), so route only layers that see a few shapes. Returns the number of layers
    routed: 0 where this torch has no oneDNN or ``R2_ONEDNN=0`` is set."""
    op = onednn.linear_op() if onednn.enabled() else None
    if op is None:
        return 0
    layers = [m for m in module.modules() if type(m) is torch.nn.Linear]
    for layer in layers:
        layer.forward = functools.partial(_onednn_linear_forward, layer, op)  # this instance only
    return len(layers)


def _onednn_linear_forward(layer: torch.nn.Linear, op, x: torch.Tensor) -> torch.Tensor:
    if (x.device.type == "cpu" and x.dtype == torch.float32 and layer.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))):
        return op(x, layer.weight, layer.bias, "none", [], "")
    return torch.nn.functional.linear(x, layer.weight, layer.bias)


@dataclass
class _Info:
    model_id: str
    path: Path
    config_hash: str


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _layer_text(layers) -> str:
    return ",".join(str(i) for i in layers) if layers else "(none)"


class FrozenCLIP:
    """A frozen CLIP (eval, no grad) that returns the kept hidden states of both towers.

    >>> clip = FrozenCLIP("openai/clip-vit-base-patch32")            # or a local folder
    >>> clip.video_features(pixel_values)                            # (B, K, N, D) float32
    >>> feats, lengths = clip.text_features(["a dog on a skateboard"])  # [(K, S, Dt)], [S]
    """

    def __init__(self, model, layers: Sequence[int] | None = None, device: str = "cpu",
                 precision: str = "fp32", truncate: bool = True):
        """``model``: hub id, local folder, or a loaded ``CLIPModel``. ``layers``: hidden-state
        indices to keep, ascending (negative: from the end, -1 = the last block); default the last
        four."""
        from transformers import CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = check_device(device)  # before anything is loaded
        if isinstance(model, CLIPModel):  # an in-memory model (benchmarks): nothing read from disk
            net, path, config = model, None, model.config
            model_id = config.name_or_path or "in-memory CLIPModel"
        else:
            path, config, model_id = _open_config(model)
            net = None
        n_vis = config.vision_config.num_hidden_layers
        n_txt = config.text_config.num_hidden_layers
        if layers is None and n_vis < 3:  # the default keeps 4 hidden states: embeddings + 3 blocks at least
            raise ModelError(f"{model_id} has {n_vis} block{'' if n_vis == 1 else 's'} ({n_vis + 1} hidden states), "
                             f"fewer than the 4 layers kept by default: pass --layers, e.g. "
                             f"{','.join(map(str, range(n_vis + 1)))}")
        if layers is None:
            default = default_layers(n_vis)
            asked = f"{_layer_text(default)} (the default)"
            layers = default
        else:
            asked = _layer_text(layers)
            layers = [i if i >= 0 else n_vis + 1 + i for i in layers]
        if not layers or sorted(set(layers)) != list(layers):
            raise ModelError(f"--layers {asked}: give distinct hidden-state indices in ascending "
                             "order, e.g. 9,10,11,12")
        if layers[0] < 0 or layers[-1] > n_vis:
            raise ModelError(f"--layers {asked}: out of range 0..{n_vis} for {model_id} (hidden-state "
                             f"indices of the vision tower; 0 = embeddings, {n_vis} = last block; "
                             "negative counts from the end)")
        # The text tower's layers: the same distance from its top (the official extraction keeps
        # the last k of each tower), so ViT-L/14's vision 21..24 go with text 9..12.
        query_layers = [i + n_txt - n_vis for i in layers]
        if query_layers[0] < 0:
            raise ModelError(f"--layers {asked}: the text tower of {model_id} has {n_txt} blocks, so "
                             f"vision layers below {n_vis - n_txt} have no text layer at the same depth "
                             f"from the top; keep layers {n_vis - n_txt}..{n_vis}")
        self.layers = layers
        self.query_layers = query_layers
        self.precision = precision
        self.info = _Info(model_id, path, config_hash(config))
        # the small files first: a damaged one is reported before seconds of loading weights
        self.tokenizer = self._tokenizer(path, config.text_config.vocab_size)
        self.preprocessor_config = self._preprocessor_config(path) if path is not None else {}
        if net is None:
            try:
                net = CLIPModel.from_pretrained(path, dtype=torch.float32)
            except Exception as exc:  # damaged or mismatched weights: OSError, safetensors' own error, ...
                raise ModelError(f"--model {model_id}: cannot load the weights in {path} "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from None
        net.eval().requires_grad_(False)
        self.vision = net.vision_model
        self.text = net.text_model
        if truncate:  # blocks after the last kept layer cannot change the kept hidden states
            # (one block at least: without any, transformers returns no hidden states, not the embeddings)
            self.vision.encoder.layers = self.vision.encoder.layers[:max(1, layers[-1])]
            self.text.encoder.layers = self.text.encoder.layers[:max(1, query_layers[-1])]
        self._to_device()
        #: linear layers whose float32 CPU products run through oneDNN (:func:`onednn_linears`):
        #: the vision tower's, on the CPU (its batches have one shape but the last; the text
        #: tower's follow the queries' lengths, and oneDNN keeps a kernel per shape)
        self.onednn_layers = onednn_linears(self.vision) if self.device.type == "cpu" else 0
        self.config = config
        self.image_size = config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.tokens = (self.image_size // self.patch_size) ** 2 + 1
        self.video_width = config.vision_config.hidden_size
        self.query_width = config.text_config.hidden_size
        self.context_length = config.text_config.max_position_embeddings

    # -- set-up helpers -------------------------------------------------------------------
    def _to_device(self):
        try:
            self.vision.to(self.device)
            self.text.to(self.device)
        except (RuntimeError, AssertionError) as exc:  # e.g. out of GPU memory
            raise ModelError(f"--device {self.device}: cannot put the model there ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None

    @staticmethod
    def _tokenizer(path: Path | None, vocab_size: int):
        if path is not None and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = load_tokenizer(path)
        else:
            tok = load_tokenizer()
        if len(tok) > vocab_size:
            raise ModelNotFoundError(f"{path}: the text tower has {vocab_size} token embeddings but the CLIP "
                                     f"tokenizer has {len(tok)}; put this model's vocab.json and merges.txt "
                                     "in its folder")
        return tok

    @staticmethod
    def _preprocessor_config(path: Path) -> dict:
        """``preprocessor_config.json`` of the model folder ({} when it has none); its
        ``image_mean``/``image_std`` (when given) as 3 numbers, RGB."""
        file = path / "preprocessor_config.json"
        if not file.is_file():
            return {}
        pc = _read_json(file)
        for key in ("image_mean", "image_std"):
            if key not in pc:
                continue
            v = pc[key]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = [v] * 3  # one value for every channel (as CLIPImageProcessor allows)
            if not (isinstance(v, list) and len(v) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)) \
                    or key == "image_std" and not all(x > 0 for x in v):
                raise _damaged(file, f"{key} must be 3 {'positive ' if key == 'image_std' else ''}numbers (R, G, "
                                     f"B), got {json.dumps(pc[key])[:80]}")
            pc[key] = [float(x) for x in v]
        return pc

    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def config_hash(self) -> str:
        return self.info.config_hash

    @functools.cached_property
    def weights_hash(self) -> str | None:
        """:func:`weights_hash` of the model folder (computed once, when first asked: reading
        the weights takes a moment); None for an in-memory model."""
        return weights_hash(self.info.path) if self.info.path is not None else None

    def image_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """mean/std from the model's ``preprocessor_config.json``, else CLIP's."""
        from r2.extract.preprocess import CLIP_MEAN, CLIP_STD

        pc = self.preprocessor_config
        return tuple(pc.get("image_mean", CLIP_MEAN)), tuple(pc.get("image_std", CLIP_STD))

    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- features -------------------------------------------------------------------------
    @torch.inference_mode()
    def video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → ``(B, K, N, D)`` float32 hidden states."""
        x = pixel_values.to(self.device, non_blocking=True)
        with self.autocast():
            out = self.vision(pixel_values=x, output_hidden_states=True)
        return torch.stack([out.hidden_states[i] for i in self.layers], dim=1).float()

    def tokenize(self, texts: Sequence[str]) -> dict:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                              return_tensors="pt")

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with SOT and EOT, not truncated: above ``context_length`` (77),
        :meth:`text_features` encodes only the first ones."""
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[int]]:
        """Texts → per text ``(K, S, Dt)`` float32 features of tokens SOT…EOT, and ``S``."""
        enc = self.tokenize(texts)
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        with self.autocast():
            out = self.text(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = torch.stack([out.hidden_states[i] for i in self.query_layers], dim=1).float()  # (B, K, S, Dt)
        lengths = mask.sum(dim=1).tolist()
        return [hs[b, :, :n].cpu().numpy() for b, n in enumerate(lengths)], lengths
