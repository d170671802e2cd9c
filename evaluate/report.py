"""Readable tables of a metrics dict (any layout :func:`r2.evaluate.score` returns)."""

from __future__ import annotations

__all__ = ["format_report"]

_BUCKET_ORDER = ("full", "short", "middle", "long")
_HL_NAMES = (("Fair", "Fair      (>= 2)"), ("Good", "Good      (>= 3)"),
             ("VeryGood", "Very Good (>= 4)"))


def _cell(value, width: int = 8) -> str:
    """A number with 2 decimals ('%.2f', rounded once), "n/a" for None, text as it is."""
    if isinstance(value, str):
        text = value
    else:
        text = "n/a" if value is None else f"{value:.2f}"
    return text.rjust(width)


def _table(header: list, rows: list, first_width: int) -> list:
    lines = ["".join([header[0].ljust(first_width)] + [h.rjust(8) for h in header[1:]])]
    for label, values in rows:
        lines.append("".join([label.ljust(first_width)] + [_cell(v) for v in values]))
    return lines


def format_report(metrics: dict, details: dict | None = None) -> str:
    """Tables for a metrics dict: moment retrieval per length bucket, highlight detection per
    level, or mAP per domain. ``details`` (filled by ``score(..., details=...)``) adds the
    number of queries per bucket, and for mAP per domain the unrounded fractions that the
    percentages are rounded from (without them the table shows the JSON's 5-decimal
    fractions as percentages with 3 decimals, rather than rounding them a second time)."""
    details = details or {}
    out = []
    if "domains" in metrics:
        # percent of the unrounded fraction, rounded once (100 x the JSON's 5-decimal fraction
        # would round twice: 0.7426499 -> 0.74265 -> "74.27"); without it, that percent exactly
        unrounded = details.get("unrounded")  # {"mAP": x, "domains": {name: x}}

        def percent(fraction, domain=None):
            if fraction is None:
                return None
            if unrounded is None:
                return f"{100 * fraction:.3f}"
            return 100 * (unrounded["mAP"] if domain is None else unrounded["domains"][domain])

        rows = [(f"  {name} ({v['videos']} video{'s' if v['videos'] != 1 else ''})",
                 [percent(v["mAP"], name)]) for name, v in metrics["domains"].items()]
        rows.append((f"  mean over {len(metrics['domains'])} domain(s)", [percent(metrics["mAP"])]))
        out += _table(["Highlight detection", "mAP %"], rows, 34)
        out.append("  (JSON holds fractions rounded to 5 decimals, as R²-Tuning prints them)")
        return "\n".join(out)
    if "full" in metrics:
        r2_style = "MR-mIoU" in metrics["full"]
        buckets = details.get("buckets", {})
        if r2_style:
            header = ["Moment retrieval", "R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "R5@0.3",
                      "R5@0.5", "R5@0.7", "mAP", "mAP@0.5", "mAP@.75"]
        else:
            header = ["Moment retrieval", "R1@0.5", "R1@0.7", "mAP@0.5", "mAP@.75", "mAP"]
        rows = []
        for name in _BUCKET_ORDER:
            sec = metrics.get(name)
            if sec is None:
                continue
            count, bounds = buckets.get(name, (None, None))
            label = f"  {name}"
            if bounds is not None:
                lo, hi = bounds
                label += f" ({lo}, {'inf' if hi == float('inf') else hi}] s"
            if count is not None:
                label += f"  {count} q"
            r1, ap = sec["MR-R1"], sec["MR-mAP"]
            if r2_style:
                r5 = sec["MR-R5"]
                rows.append((label, [r1["0.3"], r1["0.5"], r1["0.7"], sec["MR-mIoU"], r5["0.3"],
                                     r5["0.5"], r5["0.7"], ap["average"], ap["0.5"], ap["0.75"]]))
            else:
                rows.append((label, [r1["0.5"], r1["0.7"], ap["0.5"], ap["0.75"], ap["average"]]))
        out += _table(header, rows, 34)
        out.append("  (R1: first listed window, IoU >= threshold; mAP: IoU 0.5:0.95, top 10 "
                   "windows)")
    if "HL-min-Fair" in metrics:
        if out:
            out.append("")
        rows = [(f"  {label}", [metrics[f"HL-min-{key}"]["HL-mAP"],
                                metrics[f"HL-min-{key}"]["HL-Hit1"]])
                for key, label in _HL_NAMES if f"HL-min-{key}" in metrics]
        out += _table(["Highlight detection", "mAP", "HIT@1"], rows, 34)
    brief = metrics.get("brief", {})
    paper = [("MR R1@0.5", "MR-full-R1@0.5"), ("R1@0.7", "MR-full-R1@0.7"),
             ("mAP@0.5", "MR-full-mAP@0.5"), ("mAP@0.75", "MR-full-mAP@0.75"),
             ("mAP avg", "MR-full-mAP"), ("HD mAP", "HL-min-VeryGood-mAP"),
             ("HIT@1", "HL-min-VeryGood-Hit1")]
    if "MR-full-mIoU" in brief and "HL-min-VeryGood-mAP" not in brief:
        paper = [("R1@0.3", "MR-full-R1@0.3"), ("R1@0.5", "MR-full-R1@0.5"),
                 ("R1@0.7", "MR-full-R1@0.7"), ("mIoU", "MR-full-mIoU")]
    shown = [(label, brief[key]) for label, key in paper if key in brief]
    if shown:
        out.append("")
        out.append("Paper columns: " + "  ".join(f"{label} {_cell(v, 0).strip()}"
                                                 for label, v in shown))
    return "\n".join(out)
