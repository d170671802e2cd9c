"""`r2 cache import` (features of the official release's layout into a cache) against a plain
copy of the same files.

Writes ``--videos`` files of QVHighlights' shape, ``(75, 4, 50, 768)`` float16 (23 MB each, the
release's ``clip_b32_vid_k4/{vid}.npy``), and as many query files ``(12, 4, 512)``, then, for
``--rounds`` rounds, alternately:

* copy (the baseline): ``shutil.copyfile`` of every file into a fresh folder, each fsynced: what
  moving the release onto the disk costs anyway;
* import: :func:`r2.extract.npy_features.import_npy_features` into a fresh cache (shape checks,
  the writer's finite check and crc32s, shards committed with fsync and read back), with a
  ViT-B/32-sized CLIP built in memory from ``CLIPConfig()`` (random weights; the import reads
  only its config), not timed: the command's start-up (the model's files) is not part of the
  per-byte cost.

The files are in the page cache for both (one untimed pass first). Prints MB/s of the bytes
read (the .npy files) and the ratio import / copy of the medians.

    python bench/import_npy.py              # 16 videos, ~370 MB
    python bench/import_npy.py --videos 64 --dir /scratch/bench-import
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def copy_files(files, dest: Path) -> None:
    dest.mkdir()
    for f in files:
        target = dest / f.name
        shutil.copyfile(f, target)
        with open(target, "rb+") as fh:
            os.fsync(fh.fileno())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=16, help="video files (and as many query files)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", help="folder for the files (default: a temporary folder)")
    args = ap.parse_args()
    if min(args.videos, args.rounds) < 1:
        ap.error("--videos and --rounds must be at least 1")

    import numpy as np
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging as hf_logging

    from r2.extract.clip import FrozenCLIP
    from r2.extract.npy_features import import_npy_features

    hf_logging.set_verbosity_error()
    config = CLIPConfig()  # ViT-B/32 sizes: vision 768 x 12 layers, 50 tokens; text 512
    clip = FrozenCLIP(CLIPModel(config))
    with tempfile.TemporaryDirectory(prefix="r2-bench-import-", dir=args.dir) as tmp:
        root = Path(tmp)
        vid, txt = root / "clip_b32_vid_k4", root / "clip_b32_txt_k4"
        vid.mkdir()
        txt.mkdir()
        rng = np.random.default_rng(0)
        video = rng.standard_normal((75, 4, 50, 768), dtype=np.float32).astype(np.float16)
        for i in range(args.videos):
            np.save(vid / f"v{i:04d}.npy", video)
            np.save(txt / f"{i}.npy", rng.standard_normal((12, 4, 512), dtype=np.float32).astype(np.float16))
        files = sorted(vid.iterdir()) + sorted(txt.iterdir())
        size = sum(f.stat().st_size for f in files)
        for f in files:  # into the page cache
            f.read_bytes()
        times = {"copy": [], "import": []}
        for r in range(args.rounds):
            out = root / f"copy{r}"
            t0 = time.perf_counter()
            copy_files(files, out)
            times["copy"].append(time.perf_counter() - t0)
            shutil.rmtree(out)
            out = root / f"cache{r}"
            t0 = time.perf_counter()
            summary = import_npy_features(vid, out, None, fps=0.5, query_dir=txt, clip=clip, progress=False,
                                          log=lambda m: None)
            times["import"].append(time.perf_counter() - t0)
            if not summary.ok or summary.videos_imported != args.videos:
                sys.exit(summary.format())
            shutil.rmtree(out)
    print(f"{args.videos} videos (75, 4, 50, 768) + {args.videos} queries (12, 4, 512), float16, "
          f"{size / 1e6:.0f} MB, page cache warm, {args.rounds} rounds alternated")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, label in (("copy", "copy + fsync (baseline)"), ("import", "r2 cache import")):
        print(f"  {label:<26}{med[name]:>8.2f} s{size / med[name] / 1e6:>9.0f} MB/s   "
              f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"import / copy: {med['import'] / med['copy']:.2f}x the time of a plain copy")


if __name__ == "__main__":
    main()
