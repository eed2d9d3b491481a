"""Evaluation reports as text: the per-organ Markdown table, report.md and report.html.

Both reports show the same numbers as summary.json and reference the same PNG files in
figures/ (relative paths), so the output folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import html
import math

DEFINITIONS = (
    ("Dice", "2|R∩P| / (|R| + |P|) over voxels (R reference, P prediction)."),
    ("IoU", "|R∩P| / |R∪P| (Jaccard index)."),
    ("HD95", "95th-percentile Hausdorff distance in mm: the larger of the two directed 95th "
             "percentiles of distances between boundary voxels (MONAI "
             "compute_hausdorff_distance, voxel spacing taken from the affine)."),
    ("NSD", "Normalised surface Dice at the tolerance τ: the share of both boundary surfaces, "
            "weighted by surface area in mm², lying within τ mm of the other boundary (MONAI "
            "compute_surface_dice with subvoxel surfaces, as in DeepMind's surface-distance)."),
    ("Volume", "voxel count x voxel volume (from the affine) in ml; difference = prediction - "
               "reference."),
)
# (summary key, column title, number format); Dice and NSD cells are coloured in HTML.
COLUMNS = (
    ("dice", "Dice", ".3f"),
    ("iou", "IoU", ".3f"),
    ("hd95_mm", "HD95 (mm)", ".2f"),
    ("nsd", "NSD", ".3f"),
    ("ref_volume_ml", "ref. volume (ml)", ".1f"),
    ("volume_diff_ml", "volume diff. (ml)", "+.1f"),
)


def mean_std(stats: dict, metric: str, fmt: str) -> str:
    """'mean ± std' of one metric of an organ's statistics, or 'n/a'."""
    if stats[f"{metric}_mean"] is None:
        return "n/a"
    return f"{stats[f'{metric}_mean']:{fmt}} ± {stats[f'{metric}_std']:{fmt.lstrip('+')}}"


def _title(metric: str, title: str, summary: dict) -> str:
    return f"NSD @ {summary['nsd_tolerance_mm']:g} mm" if metric == "nsd" else title


def _overall(summary: dict, metric: str, fmt: str) -> str:
    value = summary.get(f"mean_{metric}")
    return "" if value is None else f"{value:{fmt}}"


def markdown_table(summary: dict) -> str:
    """The per-organ table as Markdown (also what the CLI prints)."""
    titles = [_title(m, t, summary) for m, t, _ in COLUMNS]
    lines = ["| organ | " + " | ".join(titles) + " | n | missed | spurious |",
             "|---" * (len(COLUMNS) + 4) + "|"]
    for organ, stats in summary["organs"].items():
        cells = [mean_std(stats, metric, fmt) for metric, _, fmt in COLUMNS]
        lines.append(f"| {organ} | " + " | ".join(cells) +
                     f" | {stats['n']} | {stats['missed']} | {stats['spurious']} |")
    if summary["mean_dice"] is not None:
        means = [f"**{value}**" if (value := _overall(summary, m, f)) else ""
                 for m, _, f in COLUMNS]
        lines.append("| **mean over organs** | " + " | ".join(means) +
                     f" | {summary['cases']} cases | | |")
    return "\n".join(lines)


def not_evaluated(summary: dict) -> list[str]:
    """Sentences on unpaired cases and organs (empty when everything was evaluated)."""
    notes = []
    if summary["missing_predictions"]:
        notes.append("References without a prediction: "
                     f"{', '.join(summary['missing_predictions'])}.")
    if summary["predictions_without_reference"]:
        notes.append("Predictions without a reference: "
                     f"{', '.join(summary['predictions_without_reference'])}.")
    for side, other in (("reference", "prediction"), ("prediction", "reference")):
        organs = summary[f"organs_only_in_{side}"]
        found = [f"{name} ({n} case{'s' * (n != 1)})" for name, n in organs.items() if n]
        if found:
            notes.append(f"Found in the {side} volumes but not in the {other} label map, so not "
                         f"evaluated: {', '.join(found)}.")
        absent = [name for name, n in organs.items() if not n]
        if absent:
            notes.append(f"{len(absent)} more organ(s) named only in the {side} label map, absent "
                         f"from every {side} volume: {', '.join(absent)}.")
    return notes


def markdown_report(summary: dict, ranked: list[tuple[str, float]], figures: dict,
                    sources: dict) -> str:
    """report.md: the table, definitions, policy, what was not evaluated, and the figures."""
    parts = ["# Evaluation", "",
             f"Predictions: `{sources['predictions']}`  ",
             f"References: `{sources['references']}`  ",
             f"{summary['cases']} cases; per-case numbers in `per_case.csv`, figures and "
             "per-case Dice in `report.html`.", "", markdown_table(summary), "",
             "## Definitions", ""]
    parts += [f"- **{name}**: {text}" for name, text in DEFINITIONS]
    parts += ["", f"**Empty organs.** {summary['empty_policy']}", ""]
    notes = not_evaluated(summary)
    if notes:
        parts += ["## Not evaluated", "", *[f"- {note}" for note in notes], ""]
    if ranked:
        parts += ["## Cases by mean Dice, worst first", "",
                  ", ".join(f"{case} {_fmt(value, '.3f')}" for case, value in ranked), ""]
    if figures["boxplots"] or figures["overlays"]:
        parts += ["## Figures", ""]
        parts += [f"![{metric}]({path})" for metric, path in figures["boxplots"].items()]
        parts += [f"![{o['kind']} case {o['case']}]({o['path']})" for o in figures["overlays"]]
        parts.append("")
    return "\n".join(parts)


def _fmt(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        f"{value:{fmt}}"


def _score_colour(value) -> str:
    """A background for a score cell: red up to 0.5, yellow at 0.75, green at 1."""
    if value is None or math.isnan(value):
        return "#eeeeee"
    return f"hsl({120 * min(max(2 * value - 1, 0.0), 1.0):.0f}, 70%, 82%)"


def _organ_rows(summary: dict) -> list[str]:
    rows = []
    for organ, stats in summary["organs"].items():
        cells = []
        for metric, _, fmt in COLUMNS:
            style = (f' style="background:{_score_colour(stats[f"{metric}_mean"])}"'
                     if metric in ("dice", "nsd") else "")
            cells.append(f"<td{style}>{html.escape(mean_std(stats, metric, fmt))}</td>")
        rows.append(f"<tr><th>{html.escape(organ)}</th>{''.join(cells)}<td>{stats['n']}</td>"
                    f"<td>{stats['missed']}</td><td>{stats['spurious']}</td></tr>")
    return rows


def _case_table(summary: dict, results: list[dict], ranked: list[tuple[str, float]]) -> str:
    """Per-case Dice, one row per case from worst to best, cells coloured by value."""
    organs = list(summary["organs"])
    by_case = {r["case"]: {row["organ"]: row for row in r["rows"]} for r in results}
    head = "".join(f"<th class='organ'>{html.escape(o)}</th>" for o in organs)
    lines = [f"<table><tr><th>case</th><th>mean Dice</th>{head}</tr>"]
    for case, mean in ranked:
        cells = []
        for organ in organs:
            row = by_case[case][organ]
            label = {"both_empty": "-", "pred_empty": "missed", "ref_empty": "spurious"}.get(
                row["status"], _fmt(row["dice"], ".3f"))
            cells.append(f"<td style='background:{_score_colour(row['dice'])}'>{label}</td>")
        lines.append(f"<tr><th>{html.escape(case)}</th><td style='background:"
                     f"{_score_colour(mean)}'>{_fmt(mean, '.3f')}</td>{''.join(cells)}</tr>")
    return "\n".join(lines + ["</table>"])


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f4f4f4; text-align: left; }
th.organ { writing-mode: vertical-rl; transform: rotate(180deg); }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { background: #fff8e1; padding: 0.6em 1em; border-left: 4px solid #f0b400; }
"""


def html_report(summary: dict, results: list[dict], ranked: list[tuple[str, float]],
                figures: dict, sources: dict) -> str:
    """report.html: the same content as report.md plus per-case Dice, images from figures/."""
    esc = html.escape
    titles = "".join(f"<th>{esc(_title(m, t, summary))}</th>" for m, t, _ in COLUMNS)
    means = "".join(f"<td><b>{_overall(summary, m, f)}</b></td>" for m, _, f in COLUMNS)
    body = [
        "<h1>Evaluation</h1>",
        f"<p>Predictions: <code>{esc(sources['predictions'])}</code><br>References: "
        f"<code>{esc(sources['references'])}</code><br>{summary['cases']} cases, NSD tolerance "
        f"{summary['nsd_tolerance_mm']:g} mm. Values are mean ± std over cases; Dice and NSD "
        "cells go from red (0.5 or less) through yellow (0.75) to green (1).</p>",
        f"<table><tr><th>organ</th>{titles}<th>n</th><th>missed</th><th>spurious</th></tr>",
        *_organ_rows(summary),
        f"<tr><th>mean over organs</th>{means}<td colspan=3></td></tr></table>",
        f"<p class='note'><b>Empty organs.</b> {esc(summary['empty_policy'])}</p>",
    ]
    notes = not_evaluated(summary)
    if notes:
        body += ["<h2>Not evaluated</h2><ul>", *[f"<li>{esc(n)}</li>" for n in notes], "</ul>"]
    if figures["boxplots"]:
        body.append("<h2>Distributions over cases</h2>")
        body += [f"<img src='{esc(p)}' alt='{esc(m)} per organ'>"
                 for m, p in figures["boxplots"].items()]
    if figures["overlays"]:
        body.append("<h2>Best and worst case</h2><p>Through each organ's centre: reference and "
                    "prediction agree (green), missed by the prediction (blue), predicted "
                    "outside the reference (red); other reference organs in grey.</p>")
        for o in figures["overlays"]:
            body += [f"<h3>{esc(o['kind'])}: {esc(o['case'])} (mean Dice "
                     f"{o['mean_dice']:.3f})</h3>", f"<img src='{esc(o['path'])}' "
                     f"alt='{esc(o['kind'])} case overlays'>"]
    body += ["<h2>Dice per case</h2>", _case_table(summary, results, ranked),
             "<h2>Definitions</h2><dl>",
             *[f"<dt><b>{esc(n)}</b></dt><dd>{esc(t)}</dd>" for n, t in DEFINITIONS], "</dl>"]
    return ("<!doctype html>\n<html><head><meta charset='utf-8'><title>medseg evaluation</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
