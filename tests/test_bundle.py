"""MONAI bundles through medseg's engine, read as data: the mask agrees with MONAI's own
pieces run as the bundle's config says (orientation, spacing, intensity window, Gaussian
sliding window, inverted back onto the scan), on the real 20-slice series; and everything in a
config that would run code, or that medseg does not reproduce, is one line naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import BUNDLE_LABELS, bundle_config, run_cli_here, write_bundle

from medseg.errors import MedsegError
from medseg.models.bundle import Config
from medseg.models.open import model_kind, open_model
from medseg.models.options import EngineOptions


def monai_pipeline_mask(bundle, scan) -> np.ndarray:
    """The oracle: MONAI's transforms and inferer as the config names them, by hand, and
    Invertd back onto the scan's grid (the bundle runner's postprocessing)."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet
    from monai.transforms import Compose, Invertd, Orientationd, ScaleIntensityRanged, Spacingd

    pre = Compose([Orientationd("image", axcodes="RAS"),
                   Spacingd("image", pixdim=(3.0, 3.0, 3.0), mode="bilinear"),
                   ScaleIntensityRanged("image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0,
                                        clip=True)])
    data = pre({"image": scan.clone()})
    network = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32),
                   strides=(2, 2), num_res_units=1)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    inferer = SlidingWindowInferer(roi_size=(48, 48, 16), sw_batch_size=4, overlap=0.5,
                                   mode="gaussian")
    with torch.inference_mode():
        logits = inferer(data["image"][None], network)[0]
    data["pred"] = torch.softmax(logits, 0)
    data["pred"].applied_operations = data["image"].applied_operations
    data["pred"].affine = data["image"].affine
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)
    return inverted["pred"].argmax(0).numpy().astype(np.uint8)


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_a_bundle_agrees_with_monais_own_pieces_on_the_real_series(real_data, tmp_path):
    from medseg.data.io import load_scan

    bundle = write_bundle(tmp_path / "bundle")
    assert model_kind(bundle) == "bundle"
    scan = load_scan(real_data / "petct_dicom" / "dicom")
    predictor = open_model(bundle, EngineOptions(device="cpu"))
    assert predictor.labels == {int(k): v for k, v in BUNDLE_LABELS.items()}
    assert predictor.spacing == (3.0, 3.0, 3.0)  # the "$... if @highres else ..." expression
    mine, _ = predictor.predict(scan)
    theirs = monai_pipeline_mask(bundle, scan)
    assert mine.shape == theirs.shape == tuple(scan.shape[1:])
    scores = {c: dice(mine == c, theirs == c) for c in (1, 2) if (theirs == c).sum() > 100}
    print("bundle vs MONAI's pieces, Dice per class:", scores)
    assert scores and min(scores.values()) >= 0.98, scores


def test_infer_runs_a_bundle_with_every_output_on_the_real_three_slice_series(real_data,
                                                                               tmp_path):
    bundle = write_bundle(tmp_path / "bundle", bundle_config(
        inferer={"_target_": "SlidingWindowInferer", "roi_size": [48, 48, 4]}))
    out = tmp_path / "masks"
    proc = run_cli_here("infer", "--model", bundle, "--input",
                        real_data / "dcmqi_3slice" / "dicom", "--output", out, "--statistics",
                        "--output-type", "dicom-seg", "--roi-subset", "liver")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "labels.json").read_text())["labels"] == {"0": "background",
                                                                       "1": "liver"}
    assert {"dicom.nii.gz", "dicom.seg.dcm", "dicom.stats.json"} <= {p.name for p in
                                                                      out.iterdir()}


@pytest.mark.parametrize("expression", [
    "$__import__('os').system('touch /tmp/owned')",
    "$open('/etc/passwd').read()",
    "$[x for x in range(3)]",
    "$@highres.__class__",
])
def test_expressions_that_need_code_are_refused_never_run(tmp_path, expression):
    config = bundle_config()
    config["preprocessing"]["transforms"][3]["pixdim"] = expression
    bundle = write_bundle(tmp_path / "bundle", config)
    with pytest.raises(MedsegError, match=r"inference\.json: preprocessing#transforms#3#pixdim: "
                                          r"the expression .* is not read"):
        open_model(bundle, EngineOptions(device="cpu"))


def test_the_grammar_reads_literals_references_arithmetic_and_conditions():
    config = Config({"a": 2, "b": "$@a * 3 + 1", "c": "$[@b, -@a] if @a >= 2 and True else []",
                     "d": {"e": "@c"}, "f": "$@d#e#1 / 4"}, "inference.json")
    assert config.get("b") == 7 and config.get("c") == [7, -2] and config.get("f") == -0.5
    with pytest.raises(MedsegError, match="circular"):
        Config({"a": "@b", "b": "@a"}, "inference.json").get("a")


@pytest.mark.parametrize("change, message", [
    (lambda c, m: c["network_def"].update(_target_="torch.nn.Sequential"),
     "network_def names 'torch.nn.Sequential'"),
    (lambda c, m: c["preprocessing"]["transforms"].insert(
        2, {"_target_": "NormalizeIntensityd", "keys": "image"}),
     "preprocessing transform 2 \\(NormalizeIntensityd\\) is not one medseg reproduces"),
    (lambda c, m: m["network_data_format"]["inputs"]["image"].update(modality="MR"),
     "takes 1 MR channel"),
    (lambda c, m: m["network_data_format"]["inputs"]["image"].update(num_channels=4),
     "takes 4 CT channel"),
])
def test_what_medseg_does_not_reproduce_is_named(tmp_path, change, message):
    config = bundle_config()
    metadata = {"network_data_format": {
        "inputs": {"image": {"modality": "CT", "num_channels": 1}},
        "outputs": {"pred": {"channel_def": BUNDLE_LABELS}}}}
    change(config, metadata)
    bundle = write_bundle(tmp_path / "bundle", config, metadata)
    with pytest.raises(MedsegError, match=message):
        open_model(bundle, EngineOptions(device="cpu"))


def test_weights_that_hold_code_are_refused(tmp_path):
    import pickle

    bundle = write_bundle(tmp_path / "bundle")

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"weight": Payload()}, bundle / "models" / "model.pt",
               pickle_module=pickle)
    with pytest.raises(MedsegError, match="refused, it holds pickled code"):
        open_model(bundle, EngineOptions(device="cpu"))


def test_arguments_of_transforms_medseg_does_not_need_are_never_evaluated(tmp_path):
    """wholeBody_ct_segmentation's EnsureTyped takes "$torch.float32": outside the grammar,
    and not needed, so it is not read at all."""
    config = bundle_config()
    config["preprocessing"]["transforms"][-1]["dtype"] = "$torch.float32"
    open_model(write_bundle(tmp_path / "bundle", config), EngineOptions(device="cpu"))
