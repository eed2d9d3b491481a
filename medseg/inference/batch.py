"""`medseg infer`: segment every scan of a folder, robustly, optionally across torchrun ranks."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medseg.data.files import (
    case_name,
    check_apart,
    check_name_fits,
    check_writable,
    folder_lock,
    staged_outputs,
    write_json,
)
from medseg.data.io import list_scans, load_scan, save_nifti
from medseg.data.mask_labels import labels_file, write_labels_file
from medseg.distributed import all_gather, rank_and_world
from medseg.errors import MedsegError, OutputError, find_medseg_error
from medseg.inference.options import InferOptions, RunOptions
from medseg.inference.pipeline import Pipeline, open_pipeline
from medseg.models.contract import MODEL_ID_PREFIX
from medseg.outputs.case import (
    check_scans_fit,
    extra_outputs,
    write_case_outputs,
    write_folder_outputs,
)


@dataclass
class CaseResult:
    """What happened to one input scan."""

    source: Path
    output: Path
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    error: str = ""


def output_path(scan: Path, out_dir: Path) -> Path:
    """Where a scan's mask goes: the case name with .nii.gz, in out_dir."""
    return Path(out_dir) / f"{case_name(scan)}.nii.gz"


def probabilities_path(scan: Path, out_dir: Path) -> Path:
    """Where --save-probabilities puts a scan's class probabilities."""
    return Path(out_dir) / f"{case_name(scan)}_probabilities.nii.gz"


def case_outputs(scan: Path, out_dir: Path, pipeline: Pipeline) -> list[Path]:
    """Every file a case writes: the mask and its labels, and what the options ask for."""
    mask = output_path(scan, out_dir)
    asked = [probabilities_path(scan, out_dir)] if pipeline.engine.save_probabilities else []
    return [mask, labels_file(mask), *asked, *extra_outputs(scan, out_dir, pipeline.run)]


def shard_for_rank(scans: list[Path], rank: int, world: int) -> list[Path]:
    """Every world-th scan starting at rank: each scan goes to exactly one rank."""
    return scans[rank::world]


def infer_cases(models, inputs: Path, out_dir: Path,
                options: InferOptions | None = None) -> list[CaseResult]:
    """Segment this rank's share of the scans under `inputs`; a failure doesn't stop the rest."""
    every_scan = checked_scans(inputs, out_dir)  # before the model loads: bad paths fail fast
    with run_lock(out_dir):  # one run at a time per folder: no interleaved cases
        return segment_scans(open_pipeline(models, options), every_scan, out_dir)


def segment_folder(pipeline: Pipeline, inputs: Path, out_dir: Path) -> list[CaseResult]:
    """infer_cases with a model already loaded (the Python API's Segmenter)."""
    every_scan = checked_scans(inputs, out_dir)
    with run_lock(out_dir):
        return segment_scans(pipeline, every_scan, out_dir)


def checked_scans(inputs: Path, out_dir: Path) -> list[Path]:
    """The scans under `inputs`, once the output folder is known to be apart from them (every
    file they lead to, through links too), writable, and free of two scans that would share a
    mask's name."""
    scans = list_scans(Path(inputs))
    check_apart(inputs, out_dir)
    check_outside_output(scans, out_dir)
    check_unique_outputs(scans, Path(inputs), out_dir)
    check_writable(out_dir)
    return scans


def check_outside_output(scans: list[Path], out_dir: Path) -> None:
    """Refuse a scan that is, or leads through a link to, a file in the output folder: a mask
    written there could replace it (--overwrite or not)."""
    output = Path(out_dir).resolve()
    for scan in scans:
        files = sorted(scan.iterdir()) if scan.is_dir() else [scan]  # a DICOM series: its files
        for path in [scan, *files]:
            real = path.resolve()
            if real == output or real.is_relative_to(output):
                raise MedsegError(f"{path}: leads to {real}, inside the output folder {out_dir}; "
                                  "writing masks there could replace it: move the scan out of "
                                  "the output folder, or choose another output folder")


def segment_scans(pipeline: Pipeline, every_scan: list[Path], out_dir: Path
                  ) -> list[CaseResult]:
    """Segment this rank's share of the scans; a failure doesn't stop the rest. Returns every
    rank's results (gathered under torchrun), after the folder's summaries are written. The
    caller holds the folder (run_lock; a cross-validation its folder, whose folds' held-out
    cases are predicted side by side into one out-of-fold folder)."""
    run = pipeline.run
    check_scans_fit(every_scan, run)
    rank, world = rank_and_world()
    finished = set() if run.overwrite else finished_masks(every_scan, out_dir,
                                                            pipeline.model_id, run)
    scans = shard_for_rank(every_scan, rank, world)
    # Closed also when a case stops the batch, so the error starts on a line of its own.
    with tqdm(scans, desc="infer" if world == 1 else f"infer rank {rank}", unit="case") as progress:
        results = [CaseResult(scan, output_path(scan, out_dir), "skipped") if scan in finished
                   else segment_case(pipeline, scan, out_dir, progress)
                   for scan in progress]
    results = gather_results(results)  # every rank done: the summaries see every case
    if rank == 0 and any(r.status != "failed" for r in results):  # beside masks, never alone
        write_label_map(pipeline.labels, out_dir)
        write_folder_outputs(every_scan, out_dir, run)
    return results


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """The output folder's lock (data.files.folder_lock), taken by rank 0 for every rank of
    this run; another run's refusal reaches every rank."""
    with contextlib.ExitStack() as held:
        refused = None
        if rank_and_world()[0] == 0:
            try:
                held.enter_context(folder_lock(out_dir))
            except OutputError as exc:
                refused = str(exc)
        refusals = [r for r in all_gather(refused) if r]
        if refusals:
            raise OutputError(refusals[0])
        yield


LABEL_MAP_NAME = "labels.json"


def write_label_map(labels: dict[int, str], out_dir: Path) -> None:
    """OUTPUT/labels.json: what the masks' ids mean (`medseg evaluate` pairs organs by these
    names). Written atomically, the same by every rank."""
    write_json({"labels": {str(i): name for i, name in sorted(labels.items())}},
               Path(out_dir) / LABEL_MAP_NAME)


def segment_case(pipeline: Pipeline, scan_path: Path, out_dir: Path, progress) -> CaseResult:
    """Segment one scan and write its mask (and probabilities) atomically."""
    target = output_path(scan_path, out_dir)
    start = time.perf_counter()
    try:
        for path in case_outputs(scan_path, out_dir, pipeline):
            check_name_fits(path)
        scan = load_scan(scan_path)
        mask, probabilities, affine = pipeline.segment(scan, scan_path)
        # Every file of the case appears at once, the mask last: it marks "done", its header
        # says which model made it and what its ids mean.
        with staged_outputs(out_dir, last=target.name,
                            before_move=lambda mask: check_still_free(mask, pipeline)) as stage:
            if probabilities is not None:
                save_nifti(np.moveaxis(probabilities, 0, -1), affine,
                           stage / probabilities_path(scan_path, out_dir).name, like=scan_path)
            write_case_outputs(pipeline.labels, pipeline.model_id, pipeline.run, scan, scan_path,
                               mask, affine, stage)
            write_labels_file(pipeline.labels, stage / target.name)
            save_nifti(mask, affine, stage / target.name, like=scan_path,
                       description=pipeline.model_id, labels=pipeline.labels)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop a batch
        error = find_medseg_error(exc)
        if isinstance(error, OutputError):
            raise  # a full disk fails every later case too: stop, keeping the finished masks
        if error is None and not isinstance(exc, (ValueError, RuntimeError, OSError)):
            raise
        progress.write(f"failed: {error or exc}")
        return CaseResult(scan_path, target, "failed", error=str(error or exc))
    seconds = time.perf_counter() - start
    progress.set_postfix_str(f"{case_name(scan_path)} {seconds:.1f}s")
    return CaseResult(scan_path, target, "done", seconds)


def check_still_free(mask: Path, pipeline: Pipeline) -> None:
    """At the moment a case's files move in: a file someone else put at the mask's path
    during the run is left as it is (the check at the start saw none there)."""
    if not pipeline.run.overwrite and os.path.lexists(mask) \
            and mask_author(mask) != pipeline.model_id:
        raise MedsegError(f"{mask}: appeared while this case was segmented, and this model did "
                          "not write it; left as it is: pass --overwrite to replace it, or move "
                          "it away and run again")


def check_unique_outputs(scans: list[Path], inputs: Path, out_dir: Path) -> None:
    """Refuse, before any work, scans whose masks would share a name (a.nii, a.nii.gz, a.nrrd,
    a DICOM folder a/, a_0000.nii.gz): one would silently replace or hide the others."""
    by_mask: dict[str, list[str]] = {}
    for scan in scans:
        by_mask.setdefault(output_path(scan, out_dir).name, []).append(
            scan.name + ("/" if scan.is_dir() else ""))
    clashes = [f"{', '.join(names)} -> {mask}" for mask, names in by_mask.items()
               if len(names) > 1]
    if clashes:
        raise MedsegError(f"{inputs}: scans would share a mask name ({'; '.join(clashes)}); "
                          "rename them so that each case name is unique")


def mask_author(path: Path) -> str | None:
    """The model id a medseg mask records in its header; None for no file or another file."""
    if not path.is_file():
        return None
    try:
        text = bytes(nib.load(str(path)).header["descrip"]).rstrip(b"\0").decode()
    except Exception:  # noqa: BLE001 - any unreadable or foreign file is simply not ours
        return None
    return text if text.startswith(MODEL_ID_PREFIX) else None


def finished_masks(scans: list[Path], out_dir: Path, model_id: str,
                   options: RunOptions | None = None) -> set[Path]:
    """The scans whose mask this model already finished, with every extra output `options` ask
    for (skipped without --overwrite; a missing extra output redoes the case); any other file
    at a mask's path is refused before any work."""
    existing = {scan: output_path(scan, out_dir) for scan in scans}
    existing = {scan: path for scan, path in existing.items() if os.path.lexists(path)}
    foreign = [path for path in existing.values() if mask_author(path) != model_id]
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise MedsegError(f"{out_dir}: already holds {len(foreign)} file(s) that this model did "
                          f"not write ({shown}); pass --overwrite to replace them, or choose "
                          "another output folder")
    options = options or RunOptions()
    return {scan for scan in existing
            if all(p.is_file() for p in extra_outputs(scan, out_dir, options))}


def gather_results(results: list[CaseResult]) -> list[CaseResult]:
    """All ranks' results on every rank (a no-op without torchrun), so exit codes agree."""
    return [r for part in all_gather(results) for r in part]
