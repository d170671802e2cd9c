"""``r2 extract`` and ``r2 make-tiny-clip``: the command-line side of ``r2.extract``.

This module turns the command line (folders, list files, annotation files) into plain
:class:`~r2.extract.pipeline.VideoJob` / :class:`~r2.extract.pipeline.QueryJob` lists and calls
:func:`r2.extract.pipeline.extract_features`. Annotation files are parsed by
``r2.train.annotations.load_annotations``; the sampling rate comes from the data set preset.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from r2.cli import MAX_FPS, check_fps, command_line, on_interrupt, progress_option
from r2.extract import DEFAULT_MODEL


class InputError(Exception):
    user_error = True


def _video_files(folder: Path, every_file: bool = False) -> list[Path]:
    """The video files under ``folder``; says which files it skips because their name is only
    dots before the extension (``..mp4``: no name left for an id)."""
    from r2.extract.video import VIDEO_EXTENSIONS, iter_video_files

    skipped: list[str] = []
    files = [Path(p) for p in iter_video_files(folder, None if every_file else VIDEO_EXTENSIONS, skipped=skipped)]
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        click.echo(f"warning: skipped {len(skipped)} file(s) whose name is only dots before the extension, so "
                   f"they have no video id: {shown}; rename them to extract them", err=True)
    return files


def _pick_video(candidates: list[Path], video_id: str) -> Path | None:
    """The file to use among those with a video's name: the one with a video extension, else
    the one PyAV opens as a video (a camcorder's ``.MOD``, a file without extension, ...).
    Two such files (``a.mp4`` and ``a.mkv``; ``s1/x.mp4`` and ``s2/x.mp4`` found by name) are
    the error they are without annotations: which one the annotation means is not known."""
    from r2.extract.video import VIDEO_EXTENSIONS, is_video_file

    first: dict = {}
    for f in candidates:  # one file by several names (overlapping input folders, links): its first name
        first.setdefault(_file_identity(f), f)
    unique = list(first.values())
    listed = [f for f in unique if f.suffix.lower() in VIDEO_EXTENSIONS]
    if not listed:
        listed = [f for f in unique if is_video_file(f)]
    if len(listed) > 1:
        raise _two_videos(video_id, listed[0], listed[1], more=len(listed) - 2)
    return listed[0] if listed else None


def _file_identity(path: Path):
    """The file behind ``path``: (device, inode), so that one file reached by two names (a
    symlink, a hardlink, overlapping input folders) counts once; the real path if it cannot
    be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _two_videos(video_id: str, first, second, more: int = 0, paths=None) -> InputError:
    """The error for two files that get one video id, saying why they collide (``paths``: the
    two files, when ``first``/``second`` carry more, e.g. a list file's line)."""
    a, b = Path(first), Path(second)
    pa, pb = (Path(paths[0]), Path(paths[1])) if paths else (a, b)
    if pa.with_suffix("") == pb.with_suffix(""):
        why = "same name, different extension"
    elif pa.name == pb.name:
        why = "same file name in different folders"
    else:
        why = "same name in different folders"
    also = f" (and {more} more)" if more else ""
    return InputError(f"two videos get the id {video_id!r}: {a} and {b}{also} ({why}); rename one, or move it out "
                      "of the inputs")


def _video_id(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _jobs_from_inputs(inputs: list[Path]):
    """Folders (recursive), video files and list files → (VideoJobs keyed by relative path
    without extension (a video file given itself: its name without extension), failures: the
    list files' lines that name no file, with their line numbers)."""
    from r2.extract.pipeline import Failure, VideoJob
    from r2.extract.video import VIDEO_EXTENSIONS, is_video_file

    jobs: dict[str, VideoJob] = {}
    failures: list[Failure] = []
    origin: dict[str, str] = {}  # id -> " (line N of list.txt)" for ids from a list file

    def add(video_id, path, where=""):
        if not video_id.rsplit("/", 1)[-1].strip("."):
            raise InputError(f"{path}{where}: its name is only dots before the extension, so it has no video id; "
                             "rename it")
        if video_id in jobs and jobs[video_id].path != str(path):
            raise _two_videos(video_id, f"{jobs[video_id].path}{origin.get(video_id, '')}", f"{path}{where}",
                              paths=(jobs[video_id].path, path))
        jobs[video_id] = VideoJob(video_id, str(path))
        origin[video_id] = where

    for inp in inputs:
        if inp.is_dir():
            files = _video_files(inp)
            if not files:
                raise InputError(f"{inp}: no video files (looked recursively for {', '.join(VIDEO_EXTENSIONS)}; "
                                 "name a file of another kind on the command line)")
            for f in files:
                add(_video_id(f, inp), f)
        elif inp.is_file() and inp.suffix.lower() in VIDEO_EXTENSIONS:
            add(inp.stem, inp)
        elif inp.is_file():
            base = inp.parent
            try:
                text = inp.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first path
            except UnicodeDecodeError:  # binary: a video whatever its extension, if PyAV reads it as one
                if is_video_file(inp):
                    add(inp.stem, inp)
                    continue
                raise InputError(f"{inp}: not a list of video paths (not UTF-8 text) and not a video file PyAV can "
                                 "open; give folders, video files, or text files with one path a line") from None
            for lineno, line in enumerate(text.splitlines(), 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                p = Path(entry)
                full = p if p.is_absolute() else base / p
                vid = p.stem if p.is_absolute() else p.with_suffix("").as_posix()
                where = f" (line {lineno} of {inp})"
                add(vid, full, where)
                if not full.exists():  # said here, where the line is known (decoding would say "file not found")
                    del jobs[vid]
                    failures.append(Failure(vid, str(full), f"file not found{where}"))
        else:
            raise InputError(f"{inp}: no such file or folder")
    return list(jobs.values()), failures


def _nfc(name: str) -> str:
    """``name`` in Unicode NFC: an annotation's "café" (NFC, as typed) is the file a macOS copy
    names "café" in NFD (decomposed: e + combining accent)."""
    import unicodedata

    return unicodedata.normalize("NFC", name)


def _jobs_from_annotations(annotations: Path, dataset: str | None, inputs: list[Path], fps: float | None):
    """Annotation records → (VideoJobs, QueryJobs, failures for videos not found, data set).

    YouTube Highlights without ``--fps``: each video gets its own rate, number of annotated
    clips ÷ (frames ÷ fps), and exactly that many clips (R²-Tuning's "auto")."""
    from r2.extract.pipeline import Failure, QueryJob, VideoJob
    from r2.train.annotations import load_annotations

    samples = load_annotations(annotations, dataset=dataset)
    if not samples:
        raise InputError(f"{annotations}: no records")
    ds = samples[0].dataset
    if ds == "youtube" and fps is not None:
        raise InputError(f"--fps {fps:g} with YouTube Highlights annotations ({annotations}): this benchmark takes one "
                         "frame per annotated segment (its own rate per video), so the clips would not line up "
                         "with the annotation; drop --fps")
    per_video_rate = ds == "youtube"
    # every file under the input folders, by relative path and by stem, whatever its extension: the
    # annotation names the video, the file is the one of that name with a video extension, or else
    # the one of that name PyAV opens as a video
    by_rel: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for folder in inputs:
        if not folder.exists():
            raise InputError(f"{folder}: no such folder (with --annotations, inputs are the folders that "
                             "hold the videos)")
        if not folder.is_dir():
            raise InputError(f"{folder}: with --annotations, inputs are the folders that hold the videos")
        for f in _video_files(folder, every_file=True):  # by the NFC names: a macOS copy names files in NFD
            by_rel.setdefault(_nfc(_video_id(f, folder)), []).append(f)
            by_stem.setdefault(_nfc(f.stem), []).append(f)
    videos, queries, failures, seen_q, missing = {}, [], [], set(), set()
    for s in samples:
        if s.vid not in videos and s.vid not in missing:
            stem = s.video_file_stem
            key = _nfc(stem)
            path = _pick_video(by_rel.get(key, []), s.vid) or _pick_video(by_stem.get(Path(key).name, []), s.vid)
            if path is None and Path(key).suffix:  # a vid written with its file's extension
                named = Path(key).name
                path = next((f for f in by_rel.get(str(Path(key).with_suffix("")), [])
                             + by_stem.get(Path(named).stem, []) if _nfc(f.name) == named), None)
            if path is None:
                where = ", ".join(str(i) for i in inputs)
                failures.append(Failure(s.vid, stem, f"no video file named {stem}.* under {where}"))
                missing.add(s.vid)
            else:
                job = VideoJob(s.vid, str(path))
                if per_video_rate:
                    frames, src_fps = float(s.extras["frames"]), float(s.extras["fps"])
                    count = len(s.saliency.clip_ids)
                    job.fps, job.num_clips = count * src_fps / frames, count
                videos[s.vid] = job
        if s.query_id not in seen_q:
            seen_q.add(s.query_id)
            queries.append(QueryJob(s.query_id, s.query))
    return list(videos.values()), queries, failures, ds


def _preset_fps(dataset: str | None):
    if dataset is None:
        return 0.5
    from r2.train.presets import get_preset

    fps = get_preset(dataset).fps
    return None if fps == "auto" else float(fps)


def _parse_layers(text: str | None):
    if text is None:
        return None
    try:
        layers = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 9,10,11,12 or -4,-3,-2,-1, got {text!r}",
                                 param_hint="--layers") from None
    if not layers:
        raise click.BadParameter("give at least one layer", param_hint="--layers")
    return layers


@click.command("extract", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
              help="Cache folder (created, or resumed when it exists with the same settings).")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
              help="Hugging Face CLIP: hub id (must be on disk when offline) or local folder.")
@click.option("--annotations", "-a", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Take video ids and query texts from this annotation file (any benchmark or a custom "
                   "jsonl); INPUTS are then the folders holding the videos.")
@click.option("--dataset", "-d", help="Data set preset (qvhighlights, charades, ego4d, tacos, youtube, tvsum): "
                                      "sets --fps and how the annotation file is read.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True),
              callback=check_fps,
              help=f"Clips per second, at most {MAX_FPS:g} (a clip per source frame and more are the same frames "
                   "repeated) [default: the preset's, else 0.5; YouTube: per video].")
@click.option("--layers", help="Hidden-state indices to keep, e.g. 9,10,11,12 or -4,-3,-2,-1 [default: last 4].")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True,
              help="Frames per CLIP forward.")
@click.option("--workers", "-j", type=click.IntRange(min=0),
              help="Decode processes [default: CPUs - 1 on CPU, CPUs (at most 32) on GPU; 0 = decode in the main process].")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="CLIP compute precision (fp32 = the official features).")
@click.option("--dtype", type=click.Choice(["float16", "float32", "int8"]), default="float16", show_default=True,
              help="Storage dtype in the cache.")
@click.option("--resize", type=click.Choice(["ffmpeg", "hf"]), default="ffmpeg", show_default=True,
              help="ffmpeg: swscale bicubic while decoding (the official extraction); hf: CLIPImageProcessor's.")
@click.option("--num-shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the inputs into this many parts ...")
@click.option("--shard-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="... and extract this one (0-based).")
@click.option("--decode-threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="FFmpeg threads per decode process (0 = FFmpeg's choice).")
@click.option("--max-shard-items", type=click.IntRange(min=1), hidden=True, help="Commit a cache shard every N items.")
@progress_option
@click.pass_context
def extract(ctx, inputs, out, model, annotations, dataset, fps, layers, batch_size, workers, device, precision,
            dtype, resize, num_shards, shard_index, decode_threads, max_shard_items, progress):
    """Run frozen CLIP over videos (and queries) into a feature cache.

    \b
    INPUTS: folders of videos (recursive, following symlinks), video files, or text files
    listing video paths. Video id = path relative to the folder (or the list file), without
    extension; a video file given itself: its name without extension (annotations: their vid).
    A rerun resumes: what is in the cache is skipped, failed videos are retried.

    \b
    Examples:
      r2 extract videos/ --out cache/
      r2 extract videos/ -a charades_test.jsonl -d charades --out cache/ --device cuda -j 16
      r2 extract videos/ --out cache/ --num-shards 8 --shard-index 3   # then r2 cache merge
    """
    from r2.extract.pipeline import extract_features

    if shard_index >= num_shards:
        raise click.BadParameter(f"must be in 0..{num_shards - 1} for --num-shards {num_shards}",
                                 param_hint="--shard-index")
    inputs = list(inputs)
    failures = []
    if annotations is not None:
        if not inputs:
            raise click.UsageError("with --annotations, give the folder(s) that hold the videos as INPUTS")
        videos, queries, failures, ds = _jobs_from_annotations(annotations, dataset, inputs, fps)
        run_fps = fps if fps is not None else _preset_fps(ds)
    else:
        if not inputs:
            raise click.UsageError("give video folders / list files, or --annotations FILE with the video folder")
        (videos, failures), queries = _jobs_from_inputs(inputs), []
        run_fps = fps if fps is not None else _preset_fps(dataset)
    if run_fps is None and any(v.fps is None for v in videos):
        raise InputError("this data set samples per video (YouTube: one frame per annotated clip): use its "
                         "annotation file with --annotations, or give --fps")
    line = command_line("extract")
    command = shlex.join(_with_absolute_paths(ctx, line)) if line else None
    on_interrupt(lambda: _kept_in_cache(out))
    summary = extract_features(
        videos, queries, out, model, fps=run_fps, layers=_parse_layers(layers), batch_size=batch_size,
        workers=workers, device=device, precision=precision, dtype=dtype, resize=resize, num_shards=num_shards,
        shard_index=shard_index, decode_threads=decode_threads, max_shard_items=max_shard_items,
        progress=progress, command=command, known_failures=failures)
    click.echo(summary.format())
    if not summary.ok:
        ctx.exit(1)


#: options of ``r2 extract`` whose values are paths; ``--model`` only when it names a local folder
_PATH_OPTIONS = {"--out", "-o", "--annotations", "-a", "--model", "-m"}


def _with_absolute_paths(ctx, line: list[str]) -> list[str]:
    """``line`` (``["r2", "extract", ...]``, as typed) with its INPUTS, ``--out``,
    ``--annotations`` and a local ``--model`` folder made absolute: the cache records it and
    ``r2 cache verify`` prints it as the command that rebuilds a damaged shard, which must work
    from any directory (a relative ``--model clip`` elsewhere would be taken for a hub id)."""
    takes_value = set()
    for param in ctx.command.params:
        if isinstance(param, click.Option) and not param.is_flag and not param.count:
            takes_value.update(param.opts)

    def absolute(option: str | None, value: str) -> str:
        if option in ("--model", "-m") and not os.path.exists(value):
            return value  # a hub id
        return os.path.abspath(value) if value else value

    args, out, i, only_positional = line[2:], list(line[:2]), 0, False
    while i < len(args):
        arg = args[i]
        if only_positional or arg == "-" or not arg.startswith("-"):
            out.append(absolute(None, arg))  # an input
        elif arg == "--":
            only_positional = True
            out.append(arg)
        elif arg in takes_value:
            out.append(arg)
            if i + 1 < len(args):
                i += 1
                out.append(absolute(arg, args[i]) if arg in _PATH_OPTIONS else args[i])
        elif arg.startswith("--") and arg.split("=", 1)[0] in _PATH_OPTIONS and "=" in arg:
            name, value = arg.split("=", 1)
            out.append(f"{name}={absolute(name, value)}")
        elif not arg.startswith("--") and arg[:2] in _PATH_OPTIONS and len(arg) > 2:  # -ocache
            out.append(arg[:2] + absolute(arg[:2], arg[2:]))
        else:
            out.append(arg)  # a flag, or an option with its value attached
        i += 1
    return out


def _kept_in_cache(out) -> str:
    """What an interrupted ``r2 extract`` leaves in ``out``, and how to go on."""
    from r2.cache import FeatureCache

    try:
        cache = FeatureCache.open(out)
    except Exception:  # not created yet
        return f"nothing was written to {out}"
    videos, queries = len(cache.video_ids()), len(cache.query_ids())
    return (f"{out} keeps the {videos} video(s) and {queries} query(ies) written so far (those in flight "
            "were dropped, never half-written); the same command again extracts only the rest")


@click.command("make-tiny-clip", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--width", type=click.IntRange(min=1), default=64, show_default=True,
              help="Hidden width of both towers.")
@click.option("--layers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Transformer blocks per tower.")
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True, help="Attention heads.")
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True,
              help="Input resolution in pixels (square).")
@click.option("--patch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="224/32 → 7x7 patches + CLS = 50 tokens.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
def make_tiny_clip(out_dir, seed, width, layers, heads, image_size, patch_size, overwrite):
    """Write a tiny random CLIP (config, safetensors, real tokenizer) usable as --model OUT_DIR."""
    from r2.extract.tiny import make_tiny_clip as make

    try:
        path = make(out_dir, seed=seed, width=width, layers=layers, heads=heads, image_size=image_size,
                    patch_size=patch_size, overwrite=overwrite)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc))
    size = sum(f.stat().st_size for f in path.iterdir())
    click.echo(f"wrote a tiny random CLIP to {path} ({size / 1e6:.1f} MB); use it with --model {path}")
