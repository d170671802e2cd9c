"""``r2 cache``: inspect, check and join feature caches (``info``, ``verify``, ``merge``), and
import features made elsewhere (``import``).

Each command calls one function: of ``r2.cache``, or for ``import``
:func:`r2.extract.npy_features.import_npy_features` (it reads the CLIP's files to describe
the features, as ``r2 extract`` does); errors (``CacheError``, ``ExtractionError``, ...) are
shown as one-line messages by the ``r2`` group.
"""

from __future__ import annotations

import json
import shlex
import sys

import click

from r2.cli import check_fps, command_line, fps_against_preset, on_interrupt, progress_option


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _progress(label, enabled):
    """A click progress bar on stderr (drawn only on a terminal) fed by (done, total) calls."""
    state = {}

    enabled = enabled and sys.stderr.isatty()

    def update(done, total):
        if not enabled:
            return
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)

    return update


@click.group()
def cache():
    """Inspect, check, join and import feature caches (the output of `r2 extract`)."""


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(directory, as_json):
    """Summarise the cache in DIRECTORY: items, layers, dtype, shards, bytes."""
    from r2.cache import FeatureCache
    from r2.cache.verify import with_out

    summary = FeatureCache.open(directory).info()
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
        return
    fps = summary.fps
    rows = [
        ("path", summary.path),
        ("model", f"{summary.model_id} (" + (f"weights {summary.model_weights_hash}, "
                   if summary.model_weights_hash else "") + f"config {summary.model_config_hash})"),
        ("layers", ", ".join(map(str, summary.layers))),
        ("dtype", f"{summary.dtype} (computed in {summary.precision})"),
        ("fps", "per video" if fps is None else f"{fps:g}"),
        ("videos", f"{summary.videos} in {summary.video_shards} shards"),
        ("queries", f"{summary.queries} in {summary.query_shards} shards"),
        ("bytes", f"{summary.bytes} ({_human(summary.bytes)})"),
        ("created", f"{summary.created} by r2 {summary.r2_version}"),
    ]
    if summary.token_form:
        rows.append(("tokens", summary.token_form))
    if summary.command:  # its --out made this cache's: the command adds to this cache, wherever it lies now
        here = with_out(summary.command, summary.path)
        rows.append(("command", here))
        if here != summary.command:
            rows.append(("recorded", f"{summary.command} (the cache was written elsewhere: moved or copied)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    if summary.writers:
        from r2.cache.shards import LiveWriter

        who = ", ".join(f"{LiveWriter(w['prefix'], w['host'], w['pid']).label} ({w['videos_claimed']} videos claimed)"
                        for w in summary.writers)
        click.echo(f"writing now: {len(summary.writers)} writer(s): {who}")
    if summary.partial_shards:
        click.echo(f"note: {len(summary.partial_shards)} partial shard(s) ("
                   + ("of the writers above, or of one that was stopped" if summary.writers
                      else "of a writer that was stopped: the next writer removes them")
                   + "; ignored)")
    if summary.unreadable_shards:
        click.echo(f"warning: {len(summary.unreadable_shards)} unreadable shard(s): run "
                   f"`r2 cache verify {directory}`")
    if summary.duplicate_ids:
        click.echo(f"note: {summary.duplicate_ids} id(s) are in two shards (reads use one)")


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--quick", is_flag=True,
              help="Check structure only (shapes, dtypes, layers); skip reading the data "
                   "(checksums, finiteness).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(directory, quick, as_json):
    """Check every shard of the cache in DIRECTORY.

    Opens every shard and checks shapes, dtypes, checksums, finiteness and the manifest
    (each shard records a fingerprint of the manifest it was written under).
    Names each truncated or corrupt shard and prints how to rebuild it. Exit code 1 when
    anything is wrong.
    """
    from r2.cache import verify as verify_cache

    report = verify_cache(directory, quick=quick, progress=_progress("verifying", not as_json))
    click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if as_json else report.format())
    if not report.ok:
        sys.exit(1)


@cache.command("restore-manifest")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
def restore_manifest(directory):
    """Write the lost manifest.json of the cache in DIRECTORY again, from its shards.

    Every shard records the settings it was written under (model, layers, fps, dtype,
    preprocessing, ...) and the command that wrote it; the restored manifest has exactly
    those settings, so the shards read as before. Refused when the cache has a manifest, or
    when its shards were written under several settings. Run `r2 cache verify` after it.
    """
    from r2.cache import restore_manifest as restore

    r = restore(directory)
    m = r.manifest
    click.echo(f"restored {r.path} from {r.shards} shard(s): {m['model_id']}, layers "
               f"{', '.join(map(str, m['layers']))}, fps {'per video' if m['fps'] is None else format(m['fps'], 'g')}, "
               f"{m['dtype']}")
    for names, what in ((r.unreadable, "could not be read (`r2 cache verify` names what is wrong)"),
                        (r.unrecorded, "record no settings (written by an older r2): verify notes them")):
        if names:
            click.echo(f"warning: {len(names)} shard(s) {what}: {', '.join(names[:3])}"
                       + (" ..." if len(names) > 3 else ""), err=True)
    click.echo(f"next: r2 cache verify {directory}")


@cache.command()
@click.argument("sources", nargs=-1, required=True,
                type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="The new merged cache (must not exist, or be empty).")
def merge(sources, out):
    """Join the caches SOURCES... into a new cache --out.

    The manifests must be compatible (model, layers, fps, dtype, preprocessing, precision,
    token form, sampling, shapes). An id present twice is kept once when its data are
    identical and is an error otherwise. Every item is read and checked (checksums, finite
    values) before it is copied: a damaged source is refused, naming the item and its shard.
    --out cannot be inside a source. Nothing is left at --out when the merge fails.
    """
    from r2.cache import merge as merge_caches

    s = merge_caches(sources, out, progress=_progress("merging", True))
    click.echo(f"merged {len(sources)} caches into {s.out}: {s.videos} videos, "
               f"{s.queries} queries, {s.shards} shards, {_human(s.bytes)}"
               + (f" ({s.duplicates_identical} identical duplicates kept once)"
                  if s.duplicates_identical else ""))


@cache.command("import")
@click.argument("video_dir", required=False, type=click.Path(file_okay=False, path_type=str))
@click.option("--queries", "query_dir", type=click.Path(file_okay=False, path_type=str),
              help="Folder of query features, one {query_id}.npy each, (S, K, Dt) (YouTube/TVSum: named by the "
                   "video id).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Cache folder (created, or resumed when it holds the same features).")
@click.option("--model", "-m", required=True,
              help="The CLIP that made the features: a local folder, or a hub id in the local Hugging Face "
                   "cache (its config, tokenizer and weights hash describe them, as in `r2 extract`).")
@click.option("--dataset", "-d", help="Data set whose clip rate the files were sampled at (qvhighlights, charades, "
                                      "ego4d, tacos, youtube, tvsum); or --fps.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), callback=check_fps,
              help="Clips per second the files were sampled at.")
@click.option("--annotations", "-a", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Annotation file of the queries (any layout r2 reads; --dataset says which when given): each "
                   "query is stored with its sentence, and the first 8 query files are checked against the model's "
                   "own features of their sentences before anything is written.")
@click.option("--layers", help="Hidden-state indices the files hold, ascending (e.g. 9,10,11,12) [default: the "
                               "model's last 4, as in the official release].")
@click.option("--dtype", type=click.Choice(["float16", "float32", "int8"]), default="float16", show_default=True,
              help="Storage dtype in the cache.")
@progress_option
@click.pass_context
def import_(ctx, video_dir, query_dir, out, model, dataset, fps, annotations, layers, dtype, progress):
    """Import features made elsewhere: one VIDEO_DIR/{video_id}.npy per video (T, K, N, D).

    \b
    The layout of the official R²-Tuning release (tools/extract_feat.py): no video is
    decoded and CLIP does not run; the model's files say what the features are, so the
    cache is the one `r2 extract --model MODEL` would write (the two merge, and a model
    trained on it grounds new videos with `r2 predict VIDEO`). Every file's shape is
    checked; a file that cannot be imported is named with its reason (exit code 1) and
    the others are imported. A rerun imports only what is missing.

    \b
    Examples:
      r2 cache import qvh/clip_b32_vid_k4 --queries qvh/clip_b32_txt_k4 -d qvhighlights \\
          -a highlight_train_release.jsonl --model ~/models/clip-vit-base-patch32 --out cache/qvh
      r2 cache import charades/clip_b32_vid_k4 --queries charades/clip_b32_txt_k4 -d charades -m clip/ -o cache/ch
    """
    from r2.cli.extract import _parse_layers, _with_absolute_paths
    from r2.extract.npy_features import import_npy_features
    from r2.jobs import preset_fps

    if video_dir is None and query_dir is None:
        raise click.UsageError("give VIDEO_DIR (video features), --queries DIR (query features), or both")
    if dataset is None and fps is None:
        raise click.UsageError("give the clip rate the files were sampled at: --dataset NAME (its preset's) or --fps F")
    if dataset is not None:
        try:
            warning = fps_against_preset(dataset, fps)  # --fps wins, as in r2 extract
            fps = preset_fps(dataset) if fps is None else fps
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--dataset") from None
        if warning:
            click.echo(warning, err=True)
    sentences = None
    if annotations is not None:
        from r2.train.annotations import load_annotations

        sentences = {}
        for sample in load_annotations(annotations, dataset=dataset):
            sentences.setdefault(sample.query_id, sample.query)
    line = command_line("cache")
    if line:  # recorded in the cache, and quoted by `r2 cache verify` as the rebuild command: from any folder
        line = _with_absolute_paths(ctx, line, {"--out", "-o", "--queries", "--model", "-m", "--annotations", "-a"},
                                    head=3)
    from r2.cli.extract import _kept_in_cache

    on_interrupt(lambda: _kept_in_cache(out, "imports"))
    summary = import_npy_features(video_dir, out, model, fps=fps, query_dir=query_dir, layers=_parse_layers(layers),
                                  dtype=dtype, progress=progress, command=shlex.join(line) if line else None,
                                  sentences=sentences)
    click.echo(summary.format())
    if not summary.ok:
        ctx.exit(1)
