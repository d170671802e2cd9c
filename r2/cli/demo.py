"""``r2 demo``: the whole product on a synthetic grounding set, offline (``r2.demo.run_demo``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from r2.cli import progress_option


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "-o", "out_dir", default="r2-demo", show_default=True,
              type=click.Path(path_type=Path),
              help="Output folder: new, empty, or a previous demo's (its demo files are replaced). "
                   "A non-empty folder not written by `r2 demo` is refused.")
@click.option("--model", "-m", help="CLIP model instead of the tiny random one: a local folder, or a "
                                    "hub id already in the local Hugging Face cache (nothing is "
                                    "downloaded).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Drives the videos, the queries, the tiny CLIP, training and the chance baseline.")
@click.option("--quick", is_flag=True, help="A smaller demo (fewer, shorter videos; fewer epochs): "
                                            "about 25 s instead of about a minute.")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1.")
@click.option("--threads", type=click.IntRange(min=1),
              help="torch threads [default: the CPUs this process may use].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table.")
@progress_option
def demo(out_dir, model, seed, quick, device, threads, as_json, progress):
    """Generate a synthetic grounding set and run extract → fit → predict → score on it.

    \b
    The videos are real (PyAV): sequences of coloured, patterned scenes whose boundaries
    lie on the 2-s clip grid; every query names one scene ("the green part", "blue
    stripes"). The run prints the val scores next to a chance baseline on the same
    queries, the time of each stage, and the commands that repeat each stage by hand on
    the demo folder: the same steps you run on your own videos.

    \b
    Examples:
      r2 demo                      # into ./r2-demo, about a minute on 2 CPU cores
      r2 demo --quick --out /tmp/d # smaller, about 25 s
      r2 demo --model ~/models/clip-vit-base-patch32   # a real CLIP from a local folder
    """
    from r2.demo import run_demo

    result = run_demo(out_dir, model=model, seed=seed, quick=quick, device=device, threads=threads,
                      progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.format())
