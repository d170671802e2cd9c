"""``r2 fit``: train the R² model from a feature cache (``r2.train.fit``)."""

from __future__ import annotations

from pathlib import Path

import click

from r2 import DATASETS
from r2.cli import command_line, on_interrupt, progress_option, threads_option


@click.command("fit", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", "-d", required=True, type=click.Choice(DATASETS, case_sensitive=False),
              help="Preset: every number of R²-Tuning's recipe for this data set (custom: a jsonl of "
                   "QVHighlights-layout rows, QVHighlights' recipe with batch 32).")
@click.option("--cache", "-c", required=True, type=click.Path(path_type=Path),
              help="Feature cache made by `r2 extract` (CLIP never runs here).")
@click.option("--train", "train", type=click.Path(dir_okay=False, path_type=Path),
              help="Training annotations (any layout r2 reads, or a custom jsonl).")
@click.option("--val", "val", type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluation annotations, scored every epoch; the best epoch by the preset's "
                   "main metric is kept (Charades/TACoS: their test file, as the reference does; "
                   "--set eval_split=val to select on a val file instead).")
@click.option("--run-dir", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: best weights (config.json + model.safetensors), best.json (the "
                   "epoch, its metrics and the split it was selected on), preset.json, metrics.jsonl, "
                   "checkpoints/last; missing_ids.txt when the cache lacks ids the splits need.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the benchmark's standard annotation files (used for --train/--val "
                   "when they are not given; a missing file is named with where to get it).")
@click.option("--domain", help="YouTube Highlights domain (dog, gymnastics, ...) or TVSum category (BK, "
                               "BT, ...): one model each.")
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs [default: the preset's].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a preset field, repeatable: --set lr=1e-4 --set lr_milestones=10,20 "
                   "--set hidden_dim=128 (see r2.train.presets for every field).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON (or YAML) file of preset overrides, applied before --set.")
@click.option("--resume", is_flag=True,
              help="Continue RUN_DIR from its last checkpoint (after a kill, or with a larger --epochs "
                   "to add epochs; without --epochs it keeps the run's own); the result is the same "
                   "as an uninterrupted run.")
@click.option("--init", "init", type=click.Path(file_okay=False, path_type=Path),
              help="Start from the weights of this run directory (e.g. a converted official "
                   "checkpoint); its feature spec must match the cache.")
@click.option("--allow-feature-mismatch", is_flag=True,
              help="With --init: start from weights trained on other features than the cache holds "
                   "(another fps or preprocessing: fine-tuning across data sets) with a warning, instead "
                   "of refusing.")
@click.option("--seed", type=int, help="Random seed [default: the preset's, 42].")
@click.option("--device", help="cpu, cuda, cuda:1 [default: cuda when available]. Under torchrun each "
                               "rank takes cuda:LOCAL_RANK.")
@click.option("--workers", "-j", type=click.IntRange(min=0),
              help="Data-loading processes, started exactly as given [default: on the CPU 0 (load in "
                   "the training process, which is faster there), elsewhere the preset's 4, or the CPUs "
                   "this process may use where fewer].")
@click.option("--preload", is_flag=True,
              help="Read the splits into RAM first (checked against the available memory).")
@click.option("--skip-missing", is_flag=True,
              help="Train and evaluate on the queries whose features are in the cache instead of "
                   "refusing to start (videos that could not be extracted); the others are listed in "
                   "RUN_DIR/missing_ids.txt and counted in the log and in best.json: the val metrics "
                   "are then of a subset, not comparable with published numbers.")
@threads_option
@progress_option
def fit(dataset, cache, train, val, run_dir, data_root, domain, epochs, sets, config_file, resume,
        init, allow_feature_mismatch, seed, device, workers, preload, skip_missing, progress):
    """Train the R² Block on cached CLIP features, evaluating every epoch.

    \b
    Examples:
      r2 fit -d charades -c cache/charades --train charades_train.jsonl \\
             --val charades_test.jsonl --run-dir runs/charades
      r2 fit -d qvhighlights -c cache/qvh --data-root data/qvh --run-dir runs/qvh --device cuda
      r2 fit -d custom -c cache/ --train train.jsonl --val val.jsonl -o runs/x --set lr=1e-4
      r2 fit ... --run-dir runs/qvh --resume              # after a kill: same final weights
      torchrun --nproc_per_node 4 -m r2 fit -d qvhighlights ...   # DDP, one process per GPU
    """
    from r2.train.loop import FitOptions, fit as run
    from r2.train.presets import parse_set_options

    options = FitOptions(dataset=dataset.lower(), cache=cache, run_dir=run_dir, train=train, val=val,
                         data_root=data_root, domain=domain, epochs=epochs,
                         overrides=parse_set_options(sets), config_file=config_file, resume=resume,
                         init=init, seed=seed, device=device, workers=workers, preload=preload,
                         progress=progress, skip_missing=skip_missing,
                         allow_feature_mismatch=allow_feature_mismatch)
    if _is_rank0():  # under torchrun, one rank says it
        on_interrupt(lambda: _resume_hint(run_dir))
    result = run(options)
    if result.world_size > 1 and not _is_rank0():
        return
    click.echo(f"run directory: {result.run_dir}")
    if result.best_epoch is not None and result.best_value is not None:
        on = f", selected on the {result.selected_on} split" if result.selected_on else ""
        click.echo(f"best {result.main_metric}: {result.best_value:.2f} at epoch {result.best_epoch} of "
                   f"{result.epochs} (weights in {result.run_dir}{on})")
    elif result.best_epoch is not None:
        click.echo(f"no evaluation split: the weights of epoch {result.best_epoch} are in {result.run_dir}")
    if result.last_metrics:
        brief = result.last_metrics.get("brief", result.last_metrics)
        shown = {k: v for k, v in brief.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        keys = [k for k in _SHOWN if k in shown] or list(shown)[:6]
        if keys:
            click.echo("last epoch: " + ", ".join(f"{k} {shown[k]:.2f}" for k in keys))
        bests = result.best_of_each_metric()
        evaluated = sum(1 for r in result.history if r.get("metrics"))
        if evaluated > 1 and all(k in bests for k in keys):
            click.echo("best of each over the epochs (the official logs' best_<key>; other epochs' "
                       "weights are not kept): "
                       + ", ".join(f"{k} {bests[k].value:.2f} (epoch {bests[k].epoch})" for k in keys))
    click.echo(f"next: r2 predict --checkpoint {result.run_dir} --cache {cache} --annotations FILE "
               "--out predictions.jsonl")


_SHOWN = ("MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mIoU", "MR-full-mAP",
          "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "mAP")


def _resume_hint(run_dir: Path) -> str:
    """What an interrupted ``r2 fit`` leaves in ``run_dir``, and the command that continues it."""
    import json
    import shlex

    from r2.train.checkpoint import STATE_NAME, find_last

    last = find_last(run_dir)
    if last is None:
        return f"no epoch had finished: {run_dir} has no checkpoint to resume from"
    epoch = json.loads((last / STATE_NAME).read_text())["epoch"]
    args = command_line("fit") or ["r2", "fit", "...", "--run-dir", str(run_dir)]
    args += [] if "--resume" in args else ["--resume"]
    return f"{run_dir} keeps its checkpoint after epoch {epoch}; continue with: {shlex.join(args)}"


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
