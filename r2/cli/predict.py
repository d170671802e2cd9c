"""``r2 predict``: a trained model's predictions over a cache, or for a new video."""

from __future__ import annotations

import json
from pathlib import Path

import click

from r2.cli import MAX_FPS, check_fps, progress_option, threads_option
from r2.fileio import link_target, why_not_writable


def _dataset_name(ctx, param, value):
    """The canonical name of --dataset (aliases as r2.train reads them); a usage error, as in r2 fit
    and r2 score, for an unknown one."""
    if value is None:
        return None
    from r2.train.annotations import AnnotationError, canonical_dataset

    try:
        return canonical_dataset(value)
    except AnnotationError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("predict", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("video", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", "-k", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory of `r2 fit` (or of `r2 convert-official`): config.json + "
                   "model.safetensors.")
@click.option("--cache", "-c", type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache holding the videos and queries of --annotations.")
@click.option("--annotations", "-a", type=click.Path(dir_okay=False, path_type=Path),
              help="Annotation file whose queries are predicted (any layout r2 reads).")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Prediction file to write (QVHighlights-layout jsonl, what `r2 score` reads); ids "
                   "missing from the cache are listed in missing_ids.txt beside it when that folder exists "
                   "(removed by the next successful run). With VIDEO: one row per --query (qid 0, 1, ... in their order, vid "
                   "the file name without extension).")
@click.option("--dataset", "-d", callback=_dataset_name, help="Data set of --annotations [default: detected].")
@click.option("--domain", help="YouTube domain / TVSum category of --annotations to predict.")
@click.option("--split", help="YouTube/TVSum: the split list to predict (train, val or all) [default: "
                                "val, the videos these benchmarks are scored on, as in `r2 score`].")
@click.option("--query", "-q", "queries", multiple=True,
              help="With VIDEO: the sentence to ground (repeatable).")
@click.option("--model", "-m", "clip_model",
              help="With VIDEO: the CLIP model (hub id or folder) [default: the one recorded in the "
                   "checkpoint's config, else openai/clip-vit-base-patch32].")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="With VIDEO: draw the saliency curve and the --top-k moments into this file "
                   "(.png, or .pdf, .svg, ...: its extension names the type; needs matplotlib: pip install "
                   "'r2-vtg[plot]'; checked, with its folder's permissions, before extraction).")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="With VIDEO: moments to print (and plot) per query.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), callback=check_fps,
              help=f"With VIDEO: clip rate (at most {MAX_FPS:g}), for checkpoints trained on per-video sampling (YouTube) "
                   "[default: the checkpoint's].")
@click.option("--json", "as_json", is_flag=True, help="With VIDEO: print the results as JSON.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1),
              help="Queries per forward pass [default: 16]; with VIDEO, overlapping windows of a long "
                   "video per forward pass [default: 8].")
@click.option("--device", help="cpu, cuda, cuda:1 [default: cuda when available].")
@click.option("--workers", "-j", default=0, show_default=True, type=click.IntRange(min=0),
              help="Data-loading processes (with --cache).")
@click.option("--allow-feature-mismatch", is_flag=True,
              help="Warn instead of refusing a cache whose features (CLIP model, layers, fps, "
                   "preprocessing) differ from those the checkpoint was trained on.")
@click.option("--skip-missing", is_flag=True,
              help="With --cache: predict the queries whose features are in the cache instead of "
                   "refusing (the others are listed in missing_ids.txt); score them with r2 score --subset.")
@threads_option
@progress_option
def predict(video, checkpoint, cache, annotations, out, dataset, domain, split, queries, clip_model, plot,
            top_k, fps, as_json, batch_size, device, workers, allow_feature_mismatch, skip_missing, progress):
    """Predict moments and saliency with a trained model.

    \b
    Over a feature cache (writes what `r2 score` reads):
      r2 predict --checkpoint runs/qvh --cache cache/qvh \\
                 --annotations highlight_val_release.jsonl --out preds.jsonl
    \b
    A new video of any length (extracted into a temporary cache first):
      r2 predict talk.mp4 --query "a man opens a door" --checkpoint runs/qvh \\
                 --model openai/clip-vit-base-patch32 --plot talk.png
    """
    from click.core import ParameterSource

    from r2 import grounding
    from r2.train import inference

    if video is not None:
        if cache is not None or annotations is not None:
            raise click.UsageError("give either VIDEO with --query, or --cache/--annotations/--out, not both")
        if not queries:
            raise click.UsageError("VIDEO needs at least one --query \"...\"")
        ctx = click.get_current_context()
        cache_only = [name for name, given in (("--dataset", dataset is not None), ("--domain", domain is not None),
                                               ("--split", split is not None), ("--skip-missing", skip_missing),
                                               ("--workers", ctx.get_parameter_source("workers")
                                                != ParameterSource.DEFAULT))
                      if given]
        if cache_only:  # silently ignored, --dataset would seem to set the fps or the NMS
            raise click.UsageError(f"{', '.join(cache_only)} go{'es' if len(cache_only) == 1 else ''} with --cache "
                                   "(a new video is extracted whole, at the checkpoint's fps, and decoded by its "
                                   "config)")
        if plot is not None:
            grounding.check_plot_target(plot)  # before minutes of extraction, not after
        if out is not None and (problem := why_not_writable(out, "predictions.jsonl")) is not None:
            raise inference.PredictError(f"--out {out}: {problem}")
        if out is not None:
            inference.check_out_is_no_input(out, checkpoint, {"the VIDEO": video})
        results = grounding.predict_video(video, list(queries), checkpoint, clip_model, device=device,
                                          fps=fps, batch_size=batch_size or 8, progress=progress,
                                          allow_feature_mismatch=allow_feature_mismatch,
                                          log=lambda m: click.echo(m, err=True))
        if as_json:
            click.echo(json.dumps([g.to_dict() for g in results], indent=1))
        else:
            g0 = results[0]
            click.echo(f"{g0.video}: {g0.duration:.1f} s, {g0.num_clips} clip{'' if g0.num_clips == 1 else 's'} "
                       f"at {g0.fps:g} clips/s"
                       + (f", {g0.windows_used} overlapping windows" if g0.windows_used > 1 else ""))
            for g in results:
                click.echo("")
                click.echo(grounding.format_grounding(g, top_k=top_k))
        if plot is not None:
            path = grounding.plot_grounding(results, plot, top_k=top_k)
            click.echo(f"{'' if as_json else chr(10)}wrote {path}", err=as_json)  # stdout stays JSON
        if out is not None:
            from r2.evaluate import write_jsonl

            out.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl([g.to_row(i) for i, g in enumerate(results)], link_target(out))  # qid: the --query's index
            click.echo(f"wrote {len(results)} prediction row(s) to {out}", err=as_json)
        return
    ctx = click.get_current_context()
    video_only = [name for name, given in (("--query", bool(queries)), ("--model", clip_model is not None),
                                           ("--plot", plot is not None), ("--json", as_json),
                                           ("--fps", fps is not None),
                                           ("--top-k", ctx.get_parameter_source("top_k") != ParameterSource.DEFAULT))
                  if given]
    if video_only:
        raise click.UsageError(f"{', '.join(video_only)} go{'es' if len(video_only) == 1 else ''} with a VIDEO "
                               "argument (over a cache, every moment goes to --out)")
    missing = [name for name, value in (("--cache", cache), ("--annotations", annotations), ("--out", out))
               if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give a VIDEO with --query)")
    if split is not None and annotations.suffix.lower() == ".jsonl":
        click.echo(f"Warning: --split {split} is ignored for a .jsonl file (it holds one split already; "
                   "--split selects the YouTube/TVSum videos of youtube_anno.json / tvsum_anno.json)", err=True)
        split = None
    result = inference.predict(checkpoint, cache, annotations, out=out, dataset=dataset, domain=domain,
                               split=split, batch_size=batch_size or 16, device=device, workers=workers,
                               allow_feature_mismatch=allow_feature_mismatch, skip_missing=skip_missing,
                               progress=progress, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {result.num_queries} predictions to {result.out} in {result.seconds:.1f} s")
    named = result.dataset if dataset is not None else None  # the canonical name of what was given
    command = score_command(result.out, annotations, domain, split, named)
    click.echo(f"score them: {command}" + (" --subset" if result.skipped else ""))


def score_command(predictions, annotations, domain: str | None, split: str | None,
                  dataset: str | None = None) -> str:
    """The ``r2 score`` command for what ``r2 predict`` wrote: the same --dataset (the metrics
    of the benchmark, where a jsonl alone would be scored as custom data), --domain and --split
    (r2 score, too, takes YouTube/TVSum's val list by default)."""
    import shlex

    words = ["r2", "score", str(predictions), "--gt", str(annotations)]
    if dataset is not None:
        words += ["--dataset", dataset]
    if domain is not None:
        words += ["--domain", domain]
    if split is not None:
        words += ["--split", split]
    return shlex.join(words)
