"""``r2 convert-official``: a released official R²-Tuning checkpoint -> an r2 run directory."""

from __future__ import annotations

import click

from r2 import BENCHMARKS


@click.command("convert-official")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory to write (config.json + model.safetensors).")
@click.option("--dataset", type=click.Choice(BENCHMARKS, case_sensitive=False), default=None,
              help="Data set the checkpoint was trained on: sets fps, rounding unit and NMS of the "
                   "converted config. Required unless the file keeps its released name "
                   "(r2_tuning_<dataset>[_<domain>]-<hash>.pth): the weights cannot tell the data sets apart.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Load the file fully if torch.load(weights_only=True) refuses it. A checkpoint is a "
                   "pickle: only for files from a source you trust.")
@click.option("--model", "-m", "clip_model",
              help="The CLIP model whose features the converted model is to read: a local folder (offline, the "
                   "usual case: a copy of openai/clip-vit-base-patch32), or a hub id in the local Hugging Face "
                   "cache. Its weights hash is recorded, so caches made with it from any folder match. Without "
                   "it the model names the hub id openai/clip-vit-base-patch32, which caches extracted from a "
                   "local folder do not match.")
@click.option("--force", is_flag=True, help="Replace a model already in --out.")
def convert_official(checkpoint, out_dir, dataset, trust_checkpoint, clip_model, force):
    """Convert an official R²-Tuning CHECKPOINT (.pth, or .safetensors) into an r2 run directory.

    The result works wherever an r2 run does: `r2 predict --checkpoint RUN_DIR`,
    `r2 fit --init RUN_DIR`, `R2Model.from_pretrained(RUN_DIR)`.

    \b
    Example:
      r2 convert-official r2_tuning_qvhighlights.pth --out runs/official-qvh --dataset qvhighlights \\
          --model ~/models/clip-vit-base-patch32
    """
    from r2.model.official import convert_official as run

    clip = None
    if clip_model is not None:
        from r2.extract.clip import describe_clip

        clip = describe_clip(clip_model)
    summary = run(checkpoint, out_dir, dataset=dataset.lower() if dataset else None,
                  trust_checkpoint=trust_checkpoint, overwrite=force, clip=clip)
    cfg = summary.config
    click.echo(f"converted {summary.source}")
    click.echo(f"  sha256       {summary.sha256}")
    click.echo(f"  dataset      {summary.dataset}"
               + (" (from the file name)" if summary.dataset_source == "file name" else ""))
    click.echo(f"  parameters   {summary.trainable_parameters:,} trainable")
    click.echo(f"  layers K={cfg['num_layers']}, C={cfg['hidden_dim']}, strides={cfg['strides']}, "
               f"TEF={cfg['use_tef']}, coordinate head={cfg['coord_head']}")
    click.echo(f"  decoding     fps={cfg['fps']}, unit={cfg['unit']}, nms={cfg['nms']}"
               + (f" ({cfg['nms_threshold']})" if cfg['nms'] == 'normal' else ""))
    click.echo(f"  features     {cfg['features']}")
    click.echo(f"wrote {summary.out_dir}")
