"""Markdown tables shared by the training benchmarks."""

from __future__ import annotations


def organ_dice_table(names: list[str], results: list[dict], digits: int = 3) -> str:
    """One row per result: its name, then its held-out Dice for each organ (first result's)."""
    organs = list(results[0]["organs"]) if results else []
    lines = ["| | " + " | ".join(organs) + " |", "|---|" + "---|" * len(organs)]
    lines += [f"| {name} | " + " | ".join(f"{r['organs'][o]:.{digits}f}" for o in organs) + " |"
              for name, r in zip(names, results)]
    return "\n".join(lines)
