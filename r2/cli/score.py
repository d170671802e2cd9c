"""``r2 score``: a benchmark's reference metrics for a prediction file."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import click

DATASET_HELP = "qvhighlights, charades, tacos, ego4d, youtube, tvsum, custom, or auto"


def _split_from_name(path: Path) -> str | None:
    match = re.search(r"(?:^|[^a-z])(train|val|valid|validation|test)(?:[^a-z]|$)",
                      path.name.lower())
    return match.group(1) if match else None


def _load_ground_truth(path: Path, dataset: str | None, split: str | None, domain: str | None):
    """(rows, Source, dataset, how it was detected, split description)."""
    from r2.evaluate import read_jsonl
    from r2.evaluate._common import Source
    from r2.evaluate.detect import detect_dataset_from_rows

    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
        if domain is not None:
            rows = [r for r in rows if str(r.get("domain")) == domain]
            if not rows:
                raise click.ClickException(f"{path}: no row has domain {domain!r}")
        if split not in (None, "all"):
            click.echo(f"Warning: --split {split} is ignored for a .jsonl file (it holds one "
                       "split already)", err=True)
        how = "given"
        if dataset is None:
            dataset, reason = detect_dataset_from_rows(rows)
            how = f"detected: {reason}"
        guess = _split_from_name(path)
        split_text = f'split "{guess}" by the file name' if guess else "split not in the file name"
        # after a --domain filter the rows are no longer lines of the file
        return rows, Source(str(path), lines=domain is None), dataset, how, split_text
    from r2.train import annotations  # imported only for non-jsonl layouts

    how = "given"
    if dataset is None:
        dataset = annotations.detect_dataset(str(path))
        how = "detected by r2.train.annotations"
    if split is None and dataset in ("youtube", "tvsum"):
        split = "val"
        split_text = 'split "val" (the default for this benchmark; --split to change)'
    elif split not in (None, "all"):
        split_text = f'split "{split}"'
    else:
        guess = _split_from_name(path)
        split_text = (f'all of it; split "{guess}" by the file name' if guess and split is None
                      else "all splits in the file")
    samples = annotations.load_annotations(path, dataset=dataset, domain=domain,
                                           split=None if split == "all" else split)
    rows = [s.to_row() for s in samples]
    if domain is not None:
        split_text += f", domain {domain}"
    return rows, Source(str(path), lines=False), dataset, how, split_text


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
              help="Write the metrics JSON here, in the reference evaluator's exact layout "
                   "(4-space indent, no trailing newline).")
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
              help="Score one YouTube domain (e.g. dog) or TVSum category (e.g. BK) only.")
@click.option("--top-k", type=int, default=5, show_default=True,
              help="TVSum: clips kept from the top of the ranking.")
@click.option("--json", "print_json", is_flag=True, help="Also print the metrics JSON.")
def score(predictions: Path, gt: Path, dataset, out, subset, empty_bucket, extended, split,
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
    from r2.evaluate import EvaluationError, EvaluationWarning, format_report, score as run
    from r2.evaluate import read_jsonl, write_metrics_json
    from r2.evaluate._common import Source
    from r2.evaluate.detect import DISPLAY_NAMES, normalize_dataset

    try:
        dataset = normalize_dataset(dataset)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        try:
            pred_rows = read_jsonl(predictions)
            gt_rows, gsrc, dataset, how, split_text = _load_ground_truth(gt, dataset, split,
                                                                         domain)
            click.echo(f"Scoring  {predictions}  ({len(pred_rows)} lines)")
            click.echo(f"against  {gt}  ({len(gt_rows)} queries; {split_text})")
            click.echo(f"as       {DISPLAY_NAMES[dataset]} ({how})")
            options = {"subset": subset, "pred_source": Source(str(predictions), lines=True),
                       "gt_source": gsrc}
            if dataset == "tvsum":
                options["top_k"] = top_k
            elif dataset != "youtube":
                options["empty_bucket"] = empty_bucket
                if dataset in ("qvhighlights", "custom"):
                    options["extended"] = extended or dataset == "custom"
            details: dict = {}
            metrics = run(dataset, pred_rows, gt_rows, details=details, **options)
        except EvaluationError as exc:
            _show(caught)
            raise click.ClickException(str(exc)) from None
    _show(caught)
    click.echo("")
    click.echo(format_report(metrics, details))
    if print_json:
        from r2.evaluate import dumps_metrics

        click.echo(dumps_metrics(metrics))
    if out is not None:
        write_metrics_json(metrics, out)
        click.echo(f"\nWrote {out}")


def _show(caught) -> None:
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
