"""``r2 cache``: inspect, check and join feature caches (``info``, ``verify``, ``merge``).

Each command calls one function of ``r2.cache``; errors of the cache (``CacheError``) are
shown as one-line messages by the ``r2`` group.
"""

from __future__ import annotations

import json
import sys

import click


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
    """Inspect, check and join feature caches (the output of `r2 extract`)."""


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(directory, as_json):
    """Summarise the cache in DIRECTORY: items, layers, dtype, shards, bytes."""
    from r2.cache import FeatureCache

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
    if summary.command:
        rows.append(("command", summary.command))
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
