"""Make a small nnU-Net v2 model with nnU-Net itself, and nnU-Net's own predictions with it.

The tests of `medseg infer --model NNUNET_FOLDER` need a trained-model folder that nnU-Net wrote
(its checkpoint format, its plans) and nnU-Net's answers on the same scans (the oracle). No
weights can be downloaded here, so this script trains one, on CPU:

1. phantoms in nnU-Net's raw layout (imagesTr/case_0000.nii.gz, labelsTr, dataset.json),
   stored the way DICOM converted by SimpleITK is (LPS): medseg's phantoms at their drawn
   scanner-like spacings (0.6-1 mm in plane, 1.5-5 mm slices);
2. `nnUNetv2_plan_and_preprocess`, then a reduced 3d_fullres plan (4 stages, 8-64 features,
   2 x 2 x 5 mm) preprocessed under the plans name nnUNetPlansSmall;
3. nnUNetTrainer itself, with fewer epochs and iterations (fold 0: 50 x 40, fold 1 a third
   of that), about 50 minutes on 2 CPU cores;
4. `nnUNetv2_predict` (TTA off; on for the thick-slice phantom and the 3-slice case) on
   held-out phantoms and on the real DICOM series (20 slices; 3 slices)
   (converted to NIfTI with SimpleITK, as nnU-Net users do).

nnU-Net runs in its own environment (it pulls packages medseg does not need); give its Python
with --nnunet-python. Install it with torch held at the installed build:
    python -m venv /tmp/nnv && echo torch==2.13.0 > /tmp/c.txt
    /tmp/nnv/bin/pip install -c /tmp/c.txt torch==2.13.0 nnunetv2
Then, from the repository root:
    .venv/bin/python benchmarks/nnunet_fixture.py --nnunet-python /tmp/nnv/bin/python \
        --work /tmp/nnunet_work --output tests/data/nnunet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.data.io import save_nifti  # noqa: E402
from medseg.data.phantoms import SYNTHETIC_LABELS, make_phantom  # noqa: E402

DATASET = "Dataset901_Phantoms"
PLANS = "nnUNetPlansSmall"
TRAINER_FOLDER = f"nnUNetTrainer__{PLANS}__3d_fullres"
REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
REAL_DICOM = REAL / "petct_dicom/dicom"  # 512 x 512 x 20
REAL_3SLICE = REAL / "dcmqi_3slice/dicom"  # 512 x 512 x 3: thinner than one patch
HELD_OUT = (("phantom_thin", 2001, (1.6, 1.6, 2.5), "LPS"),
            ("phantom_thick", 2002, (1.4, 1.4, 6.0), "LPS"),
            ("phantom_ras15", 2003, (1.5, 1.5, 1.5), "RAS"))

# Run inside nnU-Net's environment: a shorter schedule for nnUNetTrainer itself (the class is
# not subclassed, so the checkpoint names nnUNetTrainer and nnUNetv2_predict finds it).
TRAIN_SNIPPET = """
import sys, torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
fold, epochs, iters = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
folder = join(nnUNet_preprocessed, "{dataset}")
plans = load_json(join(folder, "{plans}.json"))
plans["continue_training"] = False  # what nnUNetv2_train sets before building the trainer
dataset_json = load_json(join(folder, "dataset.json"))
torch.manual_seed(fold)
trainer = nnUNetTrainer(plans, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
trainer.num_epochs = epochs
trainer.num_iterations_per_epoch = iters
trainer.num_val_iterations_per_epoch = 4
trainer.save_every = 1000
trainer.run_training()
"""


def write_raw_dataset(raw: Path, seeds: list[int]) -> None:
    """Phantoms as nnU-Net raw data, stored LPS like SimpleITK-converted DICOM."""
    folder = raw / DATASET
    for i, seed in enumerate(seeds):
        phantom = make_phantom(seed, orientation="LPS")
        save_nifti(phantom.image, phantom.affine, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        save_nifti(phantom.label, phantom.affine, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    labels = {name: idx for idx, name in SYNTHETIC_LABELS.items()}
    labels = {"background": 0, **{k: v for k, v in labels.items() if v}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(seeds),
               "file_ending": ".nii.gz", "name": "medseg phantoms for nnU-Net parity tests"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def small_plan(plans: dict) -> dict:
    """The default plan shrunk to train in minutes on CPU: 4 stages, 8-64 features."""
    config = plans["configurations"]["3d_fullres"]
    config.update(spacing=[5.0, 2.0, 2.0], patch_size=[32, 96, 96], batch_size=2,
                  data_identifier=f"{PLANS}_3d_fullres")
    arch = config["architecture"]["arch_kwargs"]
    arch.update(n_stages=4, features_per_stage=[8, 16, 32, 64],
                kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                n_conv_per_stage=[2, 2, 2, 2], n_conv_per_stage_decoder=[2, 2, 2])
    plans["plans_name"] = PLANS
    plans["configurations"] = {"3d_fullres": config}
    return plans


def run(command: list[str], env: dict) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run(list(map(str, command)), env=env, check=True)


def dicom_to_nifti(folder: Path, target: Path) -> None:
    """How an nnU-Net user feeds a DICOM series: SimpleITK reads it, writes NIfTI."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(reader.Execute(), str(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-python", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--train-cases", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--train-folds", default="0,1",
                        help="folds to train ('' to export the model already under --work)")
    args = parser.parse_args()

    work = args.work.resolve()
    raw, pre, results = work / "raw", work / "preprocessed", work / "results"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(results), "nnUNet_n_proc_DA": "2", "OMP_NUM_THREADS": "2"}
    bin_dir = args.nnunet_python.parent
    start = time.perf_counter()

    if not (pre / DATASET / f"{PLANS}_3d_fullres").is_dir():  # a rerun goes on from training
        write_raw_dataset(raw, list(range(1000, 1000 + args.train_cases)))
        preprocess(bin_dir, pre, env)
    snippet = TRAIN_SNIPPET.format(dataset=DATASET, plans=PLANS)
    for fold in [int(f) for f in args.train_folds.split(",") if f]:
        # fold 1 trains a third as long: it only has to be a second, different set of weights
        epochs = args.epochs if fold == 0 else max(1, args.epochs // 3)
        run([args.nnunet_python, "-c", snippet, fold, epochs, args.iterations], env)
    trained = time.perf_counter()
    export_fixture(results, args.output.resolve(), work, bin_dir, env)
    print(f"trained in {trained - start:.0f} s; everything in {time.perf_counter() - start:.0f} s"
          f"; fixture in {args.output}")


def preprocess(bin_dir: Path, pre: Path, env: dict) -> None:
    """nnU-Net's planning, then the reduced plan preprocessed under its own name."""
    run([bin_dir / "nnUNetv2_plan_and_preprocess", "-d", "901", "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity", "--no_pp"], env)
    plans = json.loads((pre / DATASET / "nnUNetPlans.json").read_text())
    (pre / DATASET / f"{PLANS}.json").write_text(json.dumps(small_plan(plans), indent=2))
    run([bin_dir / "nnUNetv2_preprocess", "-d", "901", "-plans_name", PLANS, "-c", "3d_fullres",
         "-np", "2"], env)


def export_fixture(results: Path, out: Path, work: Path, bin_dir: Path, env: dict) -> None:
    """The model folder as nnU-Net wrote it, how to draw the held-out scans, and nnU-Net's
    predictions on them."""
    model = results / DATASET / TRAINER_FOLDER
    shutil.rmtree(out, ignore_errors=True)
    target = out / "model"
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        (target).mkdir(parents=True, exist_ok=True)
        shutil.copy(model / name, target / name)
    for fold in (0, 1):
        (target / f"fold_{fold}").mkdir()
        shutil.copy(model / f"fold_{fold}" / "checkpoint_final.pth", target / f"fold_{fold}")

    # Held-out scans: phantoms (one with thick slices: nnU-Net resamples it "separate z"; one
    # stored RAS at 1.5 mm, which TotalSegmentator's own resampling leaves as it is) and the
    # real DICOM case. The phantoms are not stored: scans.json says how to draw them again and
    # the SHA-256 of their voxels, which the tests check before comparing.
    nifti_inputs = work / "inputs"
    shutil.rmtree(nifti_inputs, ignore_errors=True)
    specs = {}
    for name, seed, spacing, orientation in HELD_OUT:
        phantom = make_phantom(seed, spacing=spacing, orientation=orientation)
        save_nifti(phantom.image, phantom.affine, nifti_inputs / f"{name}_0000.nii.gz")
        specs[name] = {"seed": seed, "spacing": list(spacing), "orientation": orientation,
                       "sha256": hashlib.sha256(phantom.image.tobytes()).hexdigest()}
    (out / "scans.json").write_text(json.dumps(specs, indent=2) + "\n")
    if REAL_DICOM.is_dir():
        dicom_to_nifti(REAL_DICOM, nifti_inputs / "petct_0000.nii.gz")
    if REAL_3SLICE.is_dir():
        dicom_to_nifti(REAL_3SLICE, nifti_inputs / "dcmqi3_0000.nii.gz")
    # TTA (8 mirrorings x 2 folds) on the thick-slice phantom and the 3-slice real case only.
    tta_inputs = work / "inputs_tta"
    shutil.rmtree(tta_inputs, ignore_errors=True)
    tta_inputs.mkdir()
    for name in ("phantom_thick_0000.nii.gz", "dcmqi3_0000.nii.gz"):
        if (nifti_inputs / name).exists():
            shutil.copy(nifti_inputs / name, tta_inputs)
    for tta in (False, True):
        predictions = out / "nnunet_predictions" / ("tta" if tta else "no_tta")
        inputs = tta_inputs if tta else nifti_inputs
        run([bin_dir / "nnUNetv2_predict", "-i", inputs, "-o", predictions, "-d", "901",
             "-p", PLANS, "-c", "3d_fullres", "-f", "0", "1", "-device", "cpu", "-npp", "1",
             "-nps", "1", *([] if tta else ["--disable_tta"])], env)
        for extra in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
            (predictions / extra).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
