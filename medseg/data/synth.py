"""Write a Decathlon-format synthetic data set of abdominal CT phantoms."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medseg.data.files import write_json
from medseg.data.io import save_nifti
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


def write_partially_labelled(manifest: Path, out: Path, organ_sets: list[list[str]]) -> Path:
    """Split a synthetic data set into data sets that each label only some organs, as public
    data sets do (BTCV 13 organs, a liver-only set); returns a manifest combining them.

    Case k goes to data set k mod len(organ_sets), which numbers its organs 1, 2, ... in the
    order given and leaves the others unlabelled (background). Beside them, background.json
    lists the same cases and masks with the full label map (the hidden organs as background):
    what training without partial-label handling would see.
    """
    out = Path(out)
    data = json.loads(Path(manifest).read_text())
    names = {name: int(i) for i, name in data["labels"].items()}
    parts = [{"labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(organs)}},
              "training": []} for organs in organ_sets]
    hidden = {"labels": data["labels"], "training": []}
    for index, case in enumerate(data["training"]):
        which = index % len(organ_sets)
        image = (Path(manifest).parent / case["image"]).resolve()
        label = nib.load(str((Path(manifest).parent / case["label"]).resolve()))
        full = np.asarray(label.dataobj).astype(np.uint8)
        own_ids = np.zeros(256, dtype=np.uint8)
        shown = np.zeros(256, dtype=np.uint8)
        for own, organ in enumerate(organ_sets[which], start=1):
            own_ids[names[organ]], shown[names[organ]] = own, names[organ]
        name = Path(case["label"]).name
        own_label = out.absolute() / f"part{which}" / "labelsTr" / name
        hidden_label = out.absolute() / "background" / "labelsTr" / name
        save_nifti(own_ids[full], label.affine, own_label)
        save_nifti(shown[full], label.affine, hidden_label)
        parts[which]["training"].append({"image": str(image), "label": str(own_label)})
        hidden["training"].append({"image": str(image), "label": str(hidden_label)})
    for which, part in enumerate(parts):
        write_json({**part, "root": "/"}, out / f"part{which}" / "dataset.json")
    write_json({**hidden, "root": "/"}, out / "background" / "dataset.json")
    write_json({"datasets": [f"part{i}/dataset.json" for i in range(len(parts))]},
               out / "combined.json")
    return out / "combined.json"
