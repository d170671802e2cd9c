"""``r2 score``: a benchmark's reference metrics for a prediction file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

DATASET_HELP = "qvhighlights, charades, tacos, ego4d, youtube, tvsum, custom, or auto"


@click.command("score")
@click.argument("predictions", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gt", "--annotations", "gt", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Ground truth: a QVHighlights-layout .jsonl (QVHighlights, Charades-STA, "
                   "TACoS, Ego4D-NLQ in R²-Tuning's layout, custom data) or any layout "
                   "r2.train reads (youtube_anno.json, tvsum_anno.json, TALL txt, 2D-TAN json, "
                   "Ego4D NLQ json).")
@click.option("--dataset", default=None, metavar="NAME",
              help=f"Which benchmark's metrics: {DATASET_HELP} (default: detected from --gt).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the metrics JSON here (missing folders are made), in the reference "
                   "evaluator's exact layout (4-space indent, no trailing newline).")
@click.option("--subset", is_flag=True,
              help="Score only the queries present in both files. By default, as in the "
                   "reference, every annotated query needs a prediction and vice versa.")
@click.option("--empty-bucket", type=click.Choice(["error", "null"]), default=None,
              help="A length bucket (short/middle/long) without queries: refuse (default for "
                   "QVHighlights, where the reference crashes) or report it as null with a "
                   "warning (default elsewhere). Never 0.")
@click.option("--extended", is_flag=True,
              help="QVHighlights: R²-Tuning's evaluator layout instead of moment_detr's (adds "
                   "R1@0.3-0.45, R5, mIoU; the shared numbers are identical).")
@click.option("--split", default=None,
              help="For non-jsonl annotation files: the split to score (train, val, all). "
                   "YouTube Highlights and TVSum default to val.")
@click.option("--domain", default=None,
              help="Score one YouTube domain (e.g. dog) or TVSum category (e.g. BK) only; "
                   "prediction lines of the file's other domains are set aside.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="TVSum: clips kept from the top of the ranking.")
@click.option("--json", "print_json", is_flag=True, help="Also print the metrics JSON.")
@click.pass_context
def score(ctx, predictions: Path, gt: Path, dataset, out, subset, empty_bucket, extended, split,
          domain, top_k, print_json):
    """Score PREDICTIONS (QVHighlights-layout jsonl: qid, pred_relevant_windows
    [[start, end, score], ...], pred_saliency_scores) against --gt with the benchmark's
    reference metrics, to the last printed digit.

    \b
    QVHighlights        moment_detr's evaluator: MR R1/mAP per length bucket, HD mAP/HIT@1
    Charades/TACoS/Ego4D R²-Tuning's evaluator: R1@0.3/0.5/0.7, mIoU (+ R5, mAP)
    YouTube Highlights  mAP per domain;  TVSum  top-5 mAP per category

    \b
    Example:
      r2 score preds.jsonl --gt highlight_val_release.jsonl --out metrics.json
    """
    from r2.evaluate import EvaluationError, EvaluationWarning, format_report, read_jsonl, write_metrics_json
    from r2.evaluate.detect import DISPLAY_NAMES, normalize_dataset
    from r2.fileio import why_not_writable
    from r2.scoring import ScoringError, load_ground_truth, score_predictions

    try:
        dataset = normalize_dataset(dataset)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    if out is not None and (problem := why_not_writable(out, "metrics.json")) is not None:
        raise click.ClickException(f"--out {out}: {problem}")  # before scoring, not after
    for name, path in (("the prediction file", predictions), ("the --gt file", gt)):
        if out is not None and out.exists() and path.exists() and os.path.samefile(out, path):
            raise click.ClickException(f"--out {out} is {name}: the metrics would replace it; write them to "
                                       "another file (e.g. metrics.json)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        try:
            pred_rows = read_jsonl(predictions)
            truth = load_ground_truth(gt, dataset, split, domain)
            click.echo(f"Scoring  {predictions}  ({len(pred_rows)} lines)")
            click.echo(f"against  {gt}  ({len(truth.rows)} queries; {truth.split_text})")
            click.echo(f"as       {DISPLAY_NAMES[truth.dataset]} ({truth.how})")
            if truth.dataset != "tvsum" and ctx.get_parameter_source("top_k") is not ParameterSource.DEFAULT:
                warnings.warn(f"--top-k {top_k} is ignored: it is TVSum's, and this is "
                              f"{DISPLAY_NAMES[truth.dataset]}", EvaluationWarning)
            result = score_predictions(predictions, truth, pred_rows, subset=subset, empty_bucket=empty_bucket,
                                       extended=extended, top_k=top_k)
        except (EvaluationError, ScoringError) as exc:
            _show(caught)
            raise click.ClickException(str(exc)) from None
        except BaseException:  # an annotation error (shown by r2 as one line), Ctrl-C: the warnings first
            _show(caught)
            raise
    _show(caught)
    click.echo("")
    metrics = result.metrics
    click.echo(format_report(metrics, result.details))
    if print_json:
        from r2.evaluate import dumps_metrics

        click.echo(dumps_metrics(metrics))
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_metrics_json(metrics, out)
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
        click.echo(f"\nWrote {out}")


def _show(caught) -> None:
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
