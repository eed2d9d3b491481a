"""Write a Decathlon-format synthetic data set of abdominal CT phantoms."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medseg.data.io import save_nifti, write_json
from medseg.data.phantoms import SYNTHETIC_LABELS, make_phantom


def case_seeds(seed: int, cases: int) -> list[int]:
    """Independent per-case seeds derived from one data set seed."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(cases)]


def _write_case(args) -> dict:
    out, name, seed, spacing, phase = args
    phantom = make_phantom(seed, spacing=spacing, phase=phase)
    save_nifti(phantom.image, phantom.affine, out / "imagesTr" / f"{name}.nii.gz")
    save_nifti(phantom.label, phantom.affine, out / "labelsTr" / f"{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz",
            "phase": phantom.phase}


def write_synthetic_dataset(out: Path, cases: int, seed: int = 0, spacing=None,
                            workers: int | None = None, progress: bool = True,
                            phase: str | None = None) -> Path:
    """Generate `cases` phantoms under out/ (imagesTr, labelsTr, dataset.json); returns the JSON.

    phase fixes every case's contrast phase (default: drawn per case).
    """
    out = Path(out)
    jobs = [(out, f"case_{i:03d}", s, spacing, phase)
            for i, s in enumerate(case_seeds(seed, cases))]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            entries = list(tqdm(pool.map(_write_case, jobs), total=len(jobs), desc="synth",
                                disable=not progress))
    else:
        entries = [_write_case(job) for job in tqdm(jobs, desc="synth", disable=not progress)]
    manifest = {
        "name": "medseg-synthetic-abdomen",
        "description": f"Synthetic abdominal CT phantoms, seed {seed}",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in SYNTHETIC_LABELS.items()},
        "numTraining": len(entries),
        "training": entries,
    }
    write_json(manifest, out / "dataset.json")
    return out / "dataset.json"
