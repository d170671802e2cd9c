"""Read speed of the feature cache against a raw read of the same bytes.

Writes a temporary cache of synthetic videos (default 16 videos of 75 clips x 4 layers x 50
tokens x 768 float16, ~370 MB; ``--videos 200`` for ~4.6 GB), then, for several rounds, reads
the chosen layers of every video

* raw (the baseline): ``os.preadv`` of each layer dataset's bytes at its file offset (the
  offsets are collected beforehand: no HDF5 on the timed path), in the same order, a video's
  layers side by side in one reused video-sized buffer;
* raw, one layer-sized buffer: the same reads all into one small buffer, which stays in the
  CPU cache (an upper bound no reader that keeps the data can reach when the files are warm);
* h5py: ``Dataset.read_direct`` into the same video-sized buffer (for reference);
* ``FeatureCache.load_video(id, layers, dtype=None)``: the stored dtype, a new array per video;
* ``FeatureCache.load_video(id, layers, out=buf)``: into a reused ``(T, K, N, D)`` array;
* ``FeatureCache.load_video(id, layers)``: the default float32 (converts every value), a new
  array per video;
* ``FeatureCache.load_video(id, layers, out=f32)``: float32 into a reused array (the
  conversion without the page faults of a fresh 2x-sized array);

and prints MB/s (bytes stored on disk per second, the same bytes for every reader) and the
ratio to raw (goal: FeatureCache / raw >= 0.70, for the stored dtype; the float32 default is
printed beside it, labelled, since that is what a caller gets without ``dtype=None``). The
readers run in alternation within a
round and the median of the rounds is reported, in two page-cache states: ``warm`` (files in
the page cache, after one untimed pass) and ``cold`` (each file's pages dropped with
``posix_fadvise(DONTNEED)`` before every timed pass, so the reads come from the disk, as far
as the machine lets a user evict them).

Also prints the int8 error table of ``r2.cache.quantize`` (``--int8-only``: just that).

    python bench/cache_read.py                       # ~370 MB, all layers
    python bench/cache_read.py --read-layers 11 12   # a subset of the layers
    python bench/cache_read.py --videos 200 --dir /scratch/bench-cache
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

import numpy as np

from r2.cache import FeatureCache, encode_id
from r2.cache.quantize import error_table
from r2.cache.shards import open_h5


def build_cache(root: Path, args) -> FeatureCache:
    manifest = {"model_id": "bench/random", "model_config_hash": "bench", "layers": args.layers,
                "fps": 0.5, "preprocessing": {}, "dtype": args.dtype}
    cache = FeatureCache.create(root, manifest)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.clips, len(args.layers), args.tokens, args.width), dtype=np.float32)
    with cache.writer() as w:
        for i in range(args.videos):
            if not cache.has_video(f"video/{i:05d}"):
                w.add_video(f"video/{i:05d}", base + np.float32(i * 0.01), source=f"video/{i:05d}.mp4")
    return FeatureCache.open(root)


def segments(cache: FeatureCache, ids, layers):
    """(shard path, offset, nbytes, h5 path) of every dataset a pass reads, in read order."""
    out = []
    names = [f"L{l}" for l in layers] + ([f"L{l}_scale" for l in layers] if cache.dtype == "int8" else [])
    for vid in ids:
        shard = cache.video_shard(vid)
        with open_h5(shard) as f:
            g = f["videos"][encode_id(vid)]
            for name in names:
                ds = g[name]
                out.append((str(shard), ds.id.get_offset(), ds.nbytes, ds.name))
    return out


def drop_page_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--clips", type=int, default=75, help="T")
    ap.add_argument("--tokens", type=int, default=50, help="N (CLS + patches)")
    ap.add_argument("--width", type=int, default=768, help="D")
    ap.add_argument("--layers", type=int, nargs="+", default=[9, 10, 11, 12], help="layers stored")
    ap.add_argument("--read-layers", type=int, nargs="+", default=None, help="layers read (default: all)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32", "int8"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where to build the cache (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the cache (reused by a later run with --dir)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold page-cache rounds")
    ap.add_argument("--int8-only", action="store_true", help="print the int8 error table only")
    args = ap.parse_args(argv)

    print("int8 storage error (r2.cache.quantize.error_table; x: 75 x 50 x 768 N(0,1) with outlier channels)")
    print(f"  {'data':<28} {'storage':<8} {'rel.err':>8} {'rel.err other ch.':>18} {'max abs err':>12} {'min cos':>8}")
    for r in error_table():
        print(f"  {r['data']:<28} {r['storage']:<8} {r['rel_error']:>8.4f} {r['rel_error_regular']:>18.4f} "
              f"{r['max_abs_error']:>12.4f} {r['min_token_cosine']:>8.5f}")
    if args.int8_only:
        return 0

    tmp = None
    root = args.dir
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="r2-bench-cache-"))
        root = tmp / "cache"
    try:
        t0 = time.perf_counter()
        cache = build_cache(root, args)
        build_s = time.perf_counter() - t0
        layers = args.read_layers or args.layers
        ids = cache.video_ids()[: args.videos]
        segs = segments(cache, ids, layers)
        files = sorted({s[0] for s in segs})
        total = sum(s[2] for s in segs)
        info = cache.info()
        print(f"\ncache: {len(ids)} videos x ({args.clips}, {len(args.layers)}, {args.tokens}, {args.width}) "
              f"{args.dtype}, {info.bytes / 1e6:.0f} MB in {info.video_shards} shards "
              f"(built in {build_s:.1f} s) at {root}")
        print(f"reading layers {layers}: {total / 1e6:.0f} MB per pass, {args.rounds} rounds, median")

        fds = {p: os.open(p, os.O_RDONLY) for p in files}
        per_video = len(segs) // len(ids)
        raw_buf = np.empty(max(s[2] for s in segs), np.uint8)
        video_buf = np.empty(max(sum(s[2] for s in segs[i:i + per_video])
                                 for i in range(0, len(segs), per_video)), np.uint8)
        h5files = {p: open_h5(p) for p in files}
        shape = cache.video_shape(ids[0])
        out_dtype = np.float16 if args.dtype == "float16" else np.float32
        out_buf = np.empty((shape[0], len(layers), shape[2], shape[3]), out_dtype)
        out_f32 = np.empty(out_buf.shape, np.float32)

        def raw():  # each video's layers land side by side in one video-sized buffer
            for i in range(0, len(segs), per_video):
                pos = 0
                for path, off, n, _ in segs[i:i + per_video]:
                    assert os.preadv(fds[path], [video_buf[pos:pos + n]], off) == n
                    pos += n

        def raw_small():  # every dataset into the same buffer, which stays in the CPU cache
            for path, off, n, _ in segs:
                assert os.preadv(fds[path], [raw_buf[:n]], off) == n

        def h5_direct():  # like raw, through HDF5
            for i in range(0, len(segs), per_video):
                pos = 0
                for path, _, n, name in segs[i:i + per_video]:
                    ds = h5files[path][name]
                    ds.read_direct(video_buf[pos:pos + n].view(ds.dtype).reshape(ds.shape))
                    pos += n

        def cache_native():
            for vid in ids:
                cache.load_video(vid, layers=layers, dtype=None)

        def cache_out():
            for vid in ids:
                cache.load_video(vid, layers=layers, out=out_buf)

        def cache_f32():
            for vid in ids:
                cache.load_video(vid, layers=layers)

        def cache_out_f32():
            for vid in ids:
                cache.load_video(vid, layers=layers, out=out_f32)

        readers = [("raw os.preadv (baseline)", raw),
                   ("raw os.preadv, one layer-sized buffer", raw_small),
                   ("h5py Dataset.read_direct", h5_direct),
                   ("FeatureCache.load_video(dtype=None)", cache_native),
                   ("FeatureCache.load_video(out=buffer)", cache_out),
                   ("FeatureCache.load_video() -> float32", cache_f32),
                   ("FeatureCache.load_video(out=float32)", cache_out_f32)]
        if args.dtype == "int8":  # dtype=None is float32 there: the same as the default
            readers = [r for r in readers if r[1] is not cache_native]
        if out_dtype == np.float32:  # out=buffer is float32 already
            readers = [r for r in readers if r[1] is not cache_out_f32]
        states = ["warm"] + ([] if args.no_cold else ["cold"])
        results = {}
        for state in states:
            times = {name: [] for name, _ in readers}
            for _, fn in readers:  # one untimed pass each: warms the page cache and the handles
                fn()
            for r in range(args.rounds):
                order = readers if r % 2 == 0 else readers[::-1]
                for name, fn in order:
                    if state == "cold":
                        drop_page_cache(files)
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            results[state] = {name: total / statistics.median(ts) / 1e6 for name, ts in times.items()}

        print(f"\n{'state':<6} {'reader':<38} {'MB/s':>9} {'ratio to raw':>13}")
        for state in states:
            base = results[state]["raw os.preadv (baseline)"]
            for name, _ in readers:
                mbs = results[state][name]
                print(f"{state:<6} {name:<38} {mbs:>9.0f} {mbs / base:>13.2f}")
        headline = "FeatureCache.load_video(dtype=None)" if args.dtype != "int8" else "FeatureCache.load_video(out=buffer)"

        def ratios(name):
            raw_mbs = {s: results[s]["raw os.preadv (baseline)"] for s in states}
            return ", ".join(f"{s} {results[s][name] / raw_mbs[s]:.2f}" for s in states)

        ok = all(results[s][headline] / results[s]["raw os.preadv (baseline)"] >= 0.70 for s in states)
        print(f"\n{'stored dtype:':<16} {headline} / raw: {ratios(headline)}  "
              f"(goal >= 0.70: {'PASS' if ok else 'FAIL'})")
        default = "FeatureCache.load_video() -> float32"
        print(f"{'float32 default:':<16} {default} / raw: {ratios(default)}  "
              "(what load_video() returns by default: float32, a new array per video; not the goal's measure)")
        for fd in fds.values():
            os.close(fd)
        for f in h5files.values():
            f.close()
        cache.close()
        return 0 if ok else 1
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
