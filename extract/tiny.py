"""``r2 make-tiny-clip DIR``: a tiny randomly initialised CLIP for tests and ``r2 demo``.

Same interface as a real checkpoint (``CLIPModel`` config + ``model.safetensors`` + the real
CLIP tokenizer files + ``preprocessor_config.json``), loadable with ``--model DIR``. Defaults:
224-px images with 32-px patches (N = 50 tokens per frame, like ViT-B/32), width 64, 4 layers
in each tower, 4 heads, the full 49,408-token vocabulary. Seeded: the same seed writes the
same bytes. Random weights still separate colours (the patch embedding is a random linear
map of the pixels) and words (random token embeddings), which is all the demo needs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

__all__ = ["make_tiny_clip", "tiny_clip_config"]


def tiny_clip_config(width: int = 64, layers: int = 4, heads: int = 4, image_size: int = 224,
                     patch_size: int = 32, text_width: int | None = None, projection_dim: int | None = None):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text_width = text_width or width
    if width % heads or text_width % heads:
        raise ValueError(f"width {width} / text width {text_width} must be divisible by heads {heads}")
    if patch_size > image_size:
        raise ValueError(f"patch size {patch_size} is larger than the image size {image_size}: an image holds no "
                         "patch (e.g. --image-size 224 --patch-size 32: 7x7 patches)")
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                              hidden_act="quick_gelu", projection_dim=projection_dim or width)
    text = CLIPTextConfig(hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=layers,
                          num_attention_heads=heads, vocab_size=49408, max_position_embeddings=77,
                          hidden_act="quick_gelu", projection_dim=projection_dim or width,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                      projection_dim=projection_dim or width)


def make_tiny_clip(out_dir: str | os.PathLike, seed: int = 0, width: int = 64, layers: int = 4, heads: int = 4,
                   image_size: int = 224, patch_size: int = 32, overwrite: bool = False) -> Path:
    """Write the tiny CLIP into ``out_dir`` and return it. Refuses a non-empty folder unless ``overwrite``."""
    import torch
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from r2.extract.clip import tokenizer_dir
    from r2.extract.preprocess import CLIP_MEAN, CLIP_STD

    out = Path(out_dir)
    config = tiny_clip_config(width, layers, heads, image_size, patch_size)  # its errors before any folder is made
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a folder: give a new or empty folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file among its parents, no permission
        raise OSError(f"{out}: cannot make the folder ({exc.strerror or exc})") from None
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.config.name_or_path = f"r2-tiny-clip-seed{seed}"
    model.save_pretrained(out, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "LICENSE"):
        shutil.copyfile(tokenizer_dir() / name, out / (name if name != "LICENSE" else "LICENSE.tokenizer"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True,
    }, indent=2) + "\n")
    return out
