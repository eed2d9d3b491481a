"""`medseg report`: training curves from a run's log.csv; report text for organs without data."""

from __future__ import annotations

import math

import numpy as np
from click.testing import CliRunner

from cli import main
from medseg.evaluation.report import markdown_table
from medseg.training.log import read_training_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_training_log_cells_without_validation_read_as_nan(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_mean_dice,liver,spleen,seconds\n"
                   "1,0.9000,,,,10.0\n"
                   "2,0.7000,0.5000,0.6000,0.4000,20.0\n")
    columns = read_training_log(log)
    np.testing.assert_array_equal(columns["epoch"], [1, 2])
    assert math.isnan(columns["liver"][0]) and columns["liver"][1] == 0.6
    assert columns["val_mean_dice"][1] == 0.5


def test_report_draws_training_curves_of_a_run(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["report", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert (tiny_run / "training_curves.png").read_bytes()[:8] == PNG_MAGIC
    elsewhere = tmp_path / "curves.png"
    result = CliRunner().invoke(main, ["report", str(tiny_run), "--output", str(elsewhere)])
    assert result.exit_code == 0 and elsewhere.read_bytes()[:8] == PNG_MAGIC


def test_report_on_a_folder_without_a_log_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "log.csv: not found; is this a run folder written by `medseg train`?" in result.output
    (tmp_path / "log.csv").write_text("epoch,loss,val_mean_dice,seconds\n")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no epochs logged" in result.output


def test_markdown_table_shows_organs_without_values_as_not_available():
    empty = {f"{m}_{s}": None for m in ("dice", "iou", "hd95_mm", "nsd", "ref_volume_ml",
                                        "volume_diff_ml") for s in ("mean", "std")}
    liver = {**empty, "dice_mean": 0.9, "dice_std": 0.05, "volume_diff_ml_mean": -12.0,
             "volume_diff_ml_std": 3.0}
    summary = {"organs": {"liver": {**liver, "n": 2, "missed": 0, "spurious": 1},
                          "pancreas": {**empty, "n": 0, "missed": 0, "spurious": 0}},
               "mean_dice": 0.9, "cases": 2, "nsd_tolerance_mm": 2.0}
    table = markdown_table(summary)
    assert "NSD @ 2 mm" in table
    assert "| liver | 0.900 ± 0.050 | n/a | n/a | n/a | n/a | -12.0 ± 3.0 | 2 | 0 | 1 |" in table
    assert "| pancreas | n/a |" in table and "| **mean over organs** | **0.900** |" in table
