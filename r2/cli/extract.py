"""``r2 extract`` and ``r2 make-tiny-clip``: the command-line side of ``r2.extract``.

The command line's folders, list files and annotation files become jobs through
:mod:`r2.jobs` (``jobs_from_paths``, ``jobs_from_annotations``), which
:func:`r2.extract.pipeline.extract_features` extracts.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from r2.cli import MAX_FPS, check_fps, command_line, fps_against_preset, on_interrupt, progress_option
from r2.extract import DEFAULT_MODEL


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
@click.option("--max-shard-items", type=click.IntRange(min=1), hidden=True,
              help="Commit a cache shard every N items.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="When the rest is done, wait for the videos another live run into the same --out is "
                   "extracting, and take over any it stops without committing (so that when this run ends, all "
                   "its videos are in the cache or failed); --no-wait leaves them to it.")
@progress_option
@click.pass_context
def extract(ctx, inputs, out, model, annotations, dataset, fps, layers, batch_size, workers, device, precision,
            dtype, resize, num_shards, shard_index, decode_threads, max_shard_items, wait, progress):
    """Run frozen CLIP over videos (and queries) into a feature cache.

    \b
    INPUTS: folders of videos (recursive, following symlinks), video files, or text files
    listing video paths. Video id = path relative to the folder (or the list file), without
    extension; a video file given itself: its name without extension (annotations: their vid).
    A rerun resumes: what is in the cache is skipped, failed videos are retried. Runs started
    at once into the same --out (one per GPU, say) share the videos: each leaves those another
    live run has taken, and waits for them once the rest is done (taking over any that run
    stops without), so that each ends with all its videos in the cache (--no-wait: it does not).

    \b
    Examples:
      r2 extract videos/ --out cache/
      r2 extract videos/ -a charades_test.jsonl -d charades --out cache/ --device cuda -j 16
      r2 extract videos/ --out cache/ --num-shards 8 --shard-index 3   # one of 8 machines; then r2 cache merge
    """
    from r2.extract.pipeline import extract_features

    if shard_index >= num_shards:
        raise click.BadParameter(f"must be in 0..{num_shards - 1} for --num-shards {num_shards}",
                                 param_hint="--shard-index")
    from r2.jobs import jobs_from_annotations, jobs_from_paths

    try:
        warning = fps_against_preset(dataset, fps)
    except ValueError:  # an unknown data set: the jobs' reading says so
        warning = None
    if warning:
        click.echo(warning, err=True)
    if annotations is not None:
        if not inputs:
            raise click.UsageError("with --annotations, give the folder(s) that hold the videos as INPUTS")
        jobs = jobs_from_annotations(annotations, inputs, dataset, fps)
    else:
        if not inputs:
            raise click.UsageError("give video folders / list files, or --annotations FILE with the video folder")
        jobs = jobs_from_paths(inputs, dataset, fps)
    if jobs.skipped:
        shown = ", ".join(jobs.skipped[:3]) + (f" and {len(jobs.skipped) - 3} more" if len(jobs.skipped) > 3 else "")
        click.echo(f"warning: skipped {len(jobs.skipped)} file(s) whose name is only dots before the extension, so "
                   f"they have no video id: {shown}; rename them to extract them", err=True)
    line = command_line("extract")
    command = shlex.join(_with_absolute_paths(ctx, line)) if line else None
    on_interrupt(lambda: _kept_in_cache(out))
    summary = extract_features(
        jobs.videos, jobs.queries, out, model, fps=jobs.fps, layers=_parse_layers(layers), batch_size=batch_size,
        workers=workers, device=device, precision=precision, dtype=dtype, resize=resize, num_shards=num_shards,
        shard_index=shard_index, decode_threads=decode_threads, max_shard_items=max_shard_items,
        progress=progress, command=command, known_failures=jobs.failures, wait_for_others=wait)
    click.echo(summary.format())
    if not summary.ok:
        ctx.exit(1)


#: options of ``r2 extract`` whose values are paths; ``--model`` only when it names a local folder
_PATH_OPTIONS = {"--out", "-o", "--annotations", "-a", "--model", "-m"}


def _with_absolute_paths(ctx, line: list[str], path_options=_PATH_OPTIONS, head: int = 2) -> list[str]:
    """``line`` (``["r2", "extract", ...]``, as typed) with its INPUTS, ``--out``,
    ``--annotations`` and a local ``--model`` folder made absolute: the cache records it and
    ``r2 cache verify`` prints it as the command that rebuilds a damaged shard, which must work
    from any directory (a relative ``--model clip`` elsewhere would be taken for a hub id).
    ``path_options``: the options whose values are paths; ``head``: the words of the command
    itself (3 for ``r2 cache import``)."""
    takes_value = set()
    for param in ctx.command.params:
        if isinstance(param, click.Option) and not param.is_flag and not param.count:
            takes_value.update(param.opts)

    def absolute(option: str | None, value: str) -> str:
        if option in ("--model", "-m") and not os.path.exists(value):
            return value  # a hub id
        return os.path.abspath(value) if value else value

    args, out, i, only_positional = line[head:], list(line[:head]), 0, False
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
                out.append(absolute(arg, args[i]) if arg in path_options else args[i])
        elif arg.startswith("--") and arg.split("=", 1)[0] in path_options and "=" in arg:
            name, value = arg.split("=", 1)
            out.append(f"{name}={absolute(name, value)}")
        elif not arg.startswith("--") and arg[:2] in path_options and len(arg) > 2:  # -ocache
            out.append(arg[:2] + absolute(arg[:2], arg[2:]))
        else:
            out.append(arg)  # a flag, or an option with its value attached
        i += 1
    return out


def _kept_in_cache(out, verb: str = "extracts") -> str:
    """What an interrupted ``r2 extract`` (or ``r2 cache import``: ``verb="imports"``) leaves in
    ``out``, and how to go on."""
    from r2.cache import FeatureCache

    try:
        cache = FeatureCache.open(out)
    except Exception:  # not created yet
        return f"nothing was written to {out}"
    videos, queries = len(cache.video_ids()), len(cache.query_ids())
    return (f"{out} keeps the {videos} video(s) and {queries} query(ies) written so far (those in flight "
            f"were dropped, never half-written); the same command again {verb} only the rest")


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
    except (OSError, ValueError) as exc:  # ours are one line; a disk's (full, read-only) gets its path
        raise click.ClickException(str(exc) if exc.args and len(exc.args) == 1 else
                                   f"{out_dir}: {getattr(exc, 'strerror', None) or exc}") from None
    size = sum(f.stat().st_size for f in path.iterdir())
    click.echo(f"wrote a tiny random CLIP to {path} ({size / 1e6:.1f} MB); use it with --model {path}")
