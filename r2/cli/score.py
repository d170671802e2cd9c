"""``r2 score``: a benchmark's reference metrics for a prediction file."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import click

DATASET_HELP = "qvhighlights, charades, tacos, ego4d, youtube, tvsum, custom, or auto"


def _split_from_name(path: Path) -> str | None:
    match = re.search(r"(?:^|[^a-z])(train|val|valid|validation|test)(?:[^a-z]|$)",
                      path.name.lower())
    return match.group(1) if match else None


@dataclass
class GroundTruth:
    """The --gt rows to score and how they were found, for the report's header."""

    rows: list
    source: object  # r2.evaluate._common.Source
    dataset: str
    how: str  # "given" or how the data set was detected
    split_text: str
    #: with --domain: qids of the file in other domains (their predictions are set aside)
    other_domains: frozenset = frozenset()


def _hashable(qid) -> bool:
    try:
        hash(qid)
    except TypeError:
        return False
    return True


def _load_ground_truth(path: Path, dataset: str | None, split: str | None,
                       domain: str | None) -> GroundTruth:
    from r2.evaluate import read_jsonl
    from r2.evaluate import Source
    from r2.evaluate.detect import detect_dataset_from_rows

    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
        source = Source(str(path), lines=True)
        predicted = next((k for r in rows[:1] if isinstance(r, dict)
                          for k in ("pred_relevant_windows", "pred_saliency_scores") if k in r), None)
        if predicted is not None:
            raise click.ClickException(f"--gt {path}: line 1 has {predicted!r}: this is a prediction file, "
                                       "not ground truth; are PREDICTIONS and --gt swapped?")
        others: frozenset = frozenset()
        if domain is not None:
            keep = [i for i, r in enumerate(rows) if str(r.get("domain")) == domain]
            if not keep:
                raise click.ClickException(f"{path}: no row has domain {domain!r}")
            others = frozenset(r.get("qid") for i, r in enumerate(rows)
                               if str(r.get("domain")) != domain and _hashable(r.get("qid")))
            source = Source(str(path), lines=True, line_numbers=[i + 1 for i in keep])
            rows = [rows[i] for i in keep]
        if split not in (None, "all"):
            click.echo(f"Warning: --split {split} is ignored for a .jsonl file (it holds one "
                       "split already)", err=True)
        how = "given"
        if dataset is None:
            dataset, reason = detect_dataset_from_rows(rows)
            how = f"detected: {reason}"
        guess = _split_from_name(path)
        split_text = f'split "{guess}" by the file name' if guess else "split not in the file name"
        return GroundTruth(rows, source, dataset, how, split_text, others)
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
    split = None if split == "all" else split
    others = frozenset()
    if domain is not None:
        everything = annotations.load_annotations(path, dataset=dataset, split=split)
    samples = annotations.load_annotations(path, dataset=dataset, domain=domain, split=split)
    rows = [s.to_row() for s in samples]
    if domain is not None:
        others = frozenset(s.to_row()["qid"] for s in everything) - {r["qid"] for r in rows}
        split_text += f", domain {domain}"
    return GroundTruth(rows, Source(str(path), lines=False), dataset, how, split_text, others)


def _drop_other_domains(rows: list, others: frozenset, path: Path, domain: str):
    """The prediction rows outside --domain set aside, and a Source whose line numbers are
    still those of the file."""
    from r2.evaluate import Source

    keep = [i for i, r in enumerate(rows)
            if not (isinstance(r, dict) and _hashable(r.get("qid")) and r.get("qid") in others)]
    if len(keep) < len(rows):
        click.echo(f"--domain {domain}: set aside the {len(rows) - len(keep)} prediction lines "
                   "of other domains", err=True)
    return [rows[i] for i in keep], Source(str(path), lines=True,
                                           line_numbers=[i + 1 for i in keep])


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
    from r2.evaluate import Source
    from r2.evaluate.detect import DISPLAY_NAMES, normalize_dataset

    from r2.fileio import why_not_writable

    try:
        dataset = normalize_dataset(dataset)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    if out is not None and (problem := why_not_writable(out, "metrics.json")) is not None:
        raise click.ClickException(f"--out {out}: {problem}")  # before scoring, not after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        try:
            pred_rows = read_jsonl(predictions)
            truth = _load_ground_truth(gt, dataset, split, domain)
            dataset = truth.dataset
            click.echo(f"Scoring  {predictions}  ({len(pred_rows)} lines)")
            click.echo(f"against  {gt}  ({len(truth.rows)} queries; {truth.split_text})")
            click.echo(f"as       {DISPLAY_NAMES[dataset]} ({truth.how})")
            psrc = Source(str(predictions), lines=True)
            if truth.other_domains:
                pred_rows, psrc = _drop_other_domains(pred_rows, truth.other_domains,
                                                      predictions, domain)
            options = {"subset": subset, "pred_source": psrc, "gt_source": truth.source}
            if dataset == "tvsum":
                options["top_k"] = top_k
            elif dataset != "youtube":
                options["empty_bucket"] = empty_bucket
                if dataset in ("qvhighlights", "custom"):
                    options["extended"] = extended or dataset == "custom"
            details: dict = {}
            metrics = run(dataset, pred_rows, truth.rows, details=details, **options)
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
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_metrics_json(metrics, out)
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
        click.echo(f"\nWrote {out}")


def _show(caught) -> None:
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
