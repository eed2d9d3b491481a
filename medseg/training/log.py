"""A run's log: log.csv and TensorBoard per epoch, and the training-curves figure drawn from it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medseg.data.files import save_png
from medseg.errors import MedsegError, first_line

# log.csv: these columns, then one validation Dice column per organ, then the time.
LEADING_COLUMNS = ("epoch", "loss", "val_mean_dice")
TIME_COLUMN = "seconds"


class MetricsLog:
    """Per epoch: a log.csv row (loss, per-organ validation Dice, time) and TensorBoard scalars."""

    def __init__(self, out: Path, organs: list[str], keep: int = 0):
        """Start the log, keeping the rows of the first `keep` epochs (a resumed run)."""
        from torch.utils.tensorboard import SummaryWriter

        path = out / "log.csv"
        self.path, self.organs = path, organs
        self.board = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=keep + 1)
        kept = []
        if keep and path.exists():
            with open(path, newline="") as f:
                kept = [row for row in list(csv.reader(f))[1:] if int(row[0]) <= keep]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*LEADING_COLUMNS, *organs, TIME_COLUMN])
            writer.writerows(kept)

    def write(self, epoch: int, loss: float, dice, seconds: float) -> None:
        cells = [""] * (len(self.organs) + 1) if dice is None else [
            f"{np.nanmean(dice):.4f}", *(f"{d:.4f}" for d in dice)]
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([epoch, f"{loss:.4f}", *cells, f"{seconds:.1f}"])
        self.board.add_scalar("train/loss", loss, epoch)
        if dice is not None:
            self.board.add_scalar("val/mean_dice", float(np.nanmean(dice)), epoch)
            for organ, value in zip(self.organs, dice):
                self.board.add_scalar(f"val_dice/{organ}", float(value), epoch)
        shown = "" if dice is None else f"  val dice {np.nanmean(dice):.3f}"
        print(f"epoch {epoch}: loss {loss:.4f}{shown}  ({seconds:.0f}s)", flush=True)

    def close(self) -> None:
        """Flush TensorBoard's event file."""
        self.board.close()


def read_training_log(path: Path) -> dict[str, np.ndarray]:
    """The columns of a run's log.csv as float arrays; empty cells (no validation) are NaN."""
    path = Path(path)
    if not path.exists():
        raise MedsegError(f"{path}: not found; is this a run folder written by `medseg train`?")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MedsegError(f"{path}: not a medseg training log (not CSV text: {first_line(exc)}); "
                          "point at the run folder `medseg train` wrote") from None
    if not rows or not {"epoch", "loss"} <= rows[0].keys():
        raise MedsegError(f"{path}: no epochs logged (expected columns epoch, loss, ...)")
    try:
        return {key: np.array([float(r[key]) if r[key] not in ("", None) else math.nan
                               for r in rows]) for key in rows[0]}
    except ValueError as exc:
        raise MedsegError(f"{path}: not a medseg training log ({exc})") from None


def training_curves(log_csv: Path, path: Path) -> Path:
    """Loss and per-organ validation Dice against epoch, as one PNG."""
    log = read_training_log(log_csv)
    organs = [k for k in log if k not in (*LEADING_COLUMNS, TIME_COLUMN)]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    loss_ax, dice_ax = fig.subplots(1, 2)
    loss_ax.plot(log["epoch"], log["loss"], "-o", markersize=3)
    loss_ax.set(xlabel="epoch", ylabel="training loss (Dice + CE)", title="Loss")
    validated = ~np.isnan(log.get("val_mean_dice", np.full(len(log["epoch"]), np.nan)))
    for organ in organs:
        dice_ax.plot(log["epoch"][validated], log[organ][validated], "-", marker=".",
                     linewidth=1, label=organ)
    if validated.any():
        dice_ax.plot(log["epoch"][validated], log["val_mean_dice"][validated], "-o", color="k",
                     linewidth=2.5, label="mean")
        dice_ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    else:
        dice_ax.text(0.5, 0.5, "no validation yet", ha="center", transform=dice_ax.transAxes)
    dice_ax.set(xlabel="epoch", ylabel="Dice", title="Validation Dice per organ", ylim=(0, 1))
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
    return save_png(fig, path)
