"""Every option value a user can type ends in success or one clear error, never a traceback, and
never a silently accepted NaN: property-based over each command's numeric options, plus the
inputs that used to end in tracebacks (FIFOs, over-long paths, nested JSON, wrong recipe types).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import run_cli_here, write_nifti
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),  # 'nan', 'inf', '-0.0', '1e+308'
    st.sampled_from(["nan", "NaN", "inf", "-inf", "0", "-1", "1e308", "1e-300", "0.5", "3"]),
)


def number(text: str) -> float:
    return float(text)


# (command line before the option, option, is the value valid?). The commands point at files
# that do not exist, so a valid value gets as far as that and fails there, fast.
def commands(tmp):
    missing = str(tmp / "missing.json")
    train = ["train", "--manifest", missing, "--output", str(tmp / "run")]
    infer = ["infer", "--model", str(tmp / "none.pt"), "--input", str(tmp / "none"), "--output",
             str(tmp / "masks")]
    evaluate = ["evaluate", "--pred", str(tmp / "p"), "--ref", str(tmp / "r"), "--output",
                str(tmp / "e"), "--labels", "btcv"]
    return [
        (train, "--lr", lambda v: math.isfinite(v) and v > 0),
        (train, "--dice-weight", lambda v: math.isfinite(v) and v >= 0),
        (train, "--ce-weight", lambda v: math.isfinite(v) and v >= 0),
        (infer, "--overlap", lambda v: 0 <= v <= 0.95),
        (infer, "--min-volume", lambda v: math.isfinite(v) and v >= 0),
        ([*infer, "--crf"], "--crf-appearance-hu", lambda v: math.isfinite(v) and v > 0),
        (["plan", "--manifest", missing], "--memory-gb", lambda v: math.isfinite(v) and v >= 0.5),
        (evaluate, "--nsd-tolerance", lambda v: math.isfinite(v) and v >= 0),
    ]


def invoke(args):
    result = run_cli_here(*args)
    assert "Traceback" not in result.stderr, f"traceback for {args}: {result.stderr}"
    return result


def assert_one_clear_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("index", range(8))
@SETTINGS
@given(value=NUMBERS)
def test_numeric_options_take_finite_values_in_range_or_say_which_option(tmp_path, index,
                                                                          value):
    base, option, valid = commands(tmp_path)[index]
    result = invoke([*base, option, value])
    assert_one_clear_error(result)
    if valid(number(value)):
        assert option not in result.stderr  # it got past parsing, to the missing file
    else:
        assert f"Invalid value for '{option}'" in result.stderr


@SETTINGS
@given(parts=st.lists(NUMBERS, min_size=1, max_size=4))
def test_spacing_is_three_finite_millimetre_values_for_train_and_synth(tmp_path, parts):
    text = ",".join(parts)
    values = [number(p) for p in parts]
    valid = len(values) == 3 and all(math.isfinite(v) and 0.25 <= v <= 20 for v in values)
    train = invoke(["train", "--manifest", tmp_path / "missing.json", "--output",
                    tmp_path / "run", "--spacing", text])
    assert_one_clear_error(train)
    assert ("Invalid value for '--spacing'" in train.stderr) != valid
    if not (len(values) == 3 and all(math.isfinite(v) and 0.25 <= v <= 10 for v in values)):
        synth = invoke(["synth", tmp_path / "s", "--spacing", text])
        assert_one_clear_error(synth, "Invalid value for '--spacing'")
        assert not (tmp_path / "s").exists()


@SETTINGS
@given(sizes=st.lists(st.integers(-3, 10**12), min_size=3, max_size=3))
def test_patch_sizes_are_whole_numbers_up_to_1024(tmp_path, sizes):
    result = invoke(["train", "--manifest", tmp_path / "missing.json", "--output",
                     tmp_path / "run", "--patch-size", ",".join(map(str, sizes))])
    assert_one_clear_error(result)
    valid = all(1 <= s <= 1024 for s in sizes)
    assert ("Invalid value for '--patch-size'" in result.stderr) != valid


@pytest.mark.parametrize("text, message", [
    ("epochs: ten\n", "epochs: expected a whole number, got 'ten'"),
    ("lr: .nan\n", "lr: nan is not a finite number above 0"),
    ("spacing: 3\n", "spacing: expected three numbers like [3, 3, 3], got 3"),
    ("spacing: [3, 3, .inf]\n", "spacing: inf is not a finite number"),
    ("overlap: 1.5\n", "overlap: 1.5 is not a finite number at least 0 and at most 0.95"),
    ("batch_size: true\n", "batch_size: expected a whole number, got True"),
    ("model_kwargs: [16, 32]\n", "model_kwargs: expected a mapping"),
])
def test_recipe_values_of_the_wrong_type_or_range_are_named(tiny_dataset, tmp_path, text,
                                                            message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    result = invoke(["train", "--pipeline", recipe, "--manifest", tiny_dataset, "--output",
                     tmp_path / "run"])
    assert_one_clear_error(result, message)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_fifo_as_input_and_an_empty_input_are_one_line_each(tmp_path):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    args = ["infer", "--model", tmp_path / "m.pt", "--output", tmp_path / "out", "--input"]
    assert_one_clear_error(invoke([*args, fifo]), "neither a file nor a folder")
    assert_one_clear_error(invoke([*args, ""]), "Invalid value for '--input': is empty")


def test_an_over_long_output_path_is_one_line(tiny_run, tmp_path):
    scan = write_nifti(tmp_path / "a.nii.gz", np.full((8, 8, 8), -1000, np.int16))
    result = invoke(["infer", "--model", tiny_run, "--input", scan, "--output",
                     tmp_path / ("x" * 300) / "masks"])
    assert_one_clear_error(result, "cannot write output here (File name too long)")


def test_a_deeply_nested_manifest_is_one_line(tmp_path):
    manifest = tmp_path / "dataset.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    result = invoke(["plan", "--manifest", manifest])
    assert_one_clear_error(result, "nested too deeply")


def test_a_cache_dir_that_cannot_be_a_folder_is_refused_before_training(tiny_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    result = invoke(["train", "--manifest", tiny_dataset, "--output", tmp_path / "run",
                     "--cache-dir", blocker / "cache"])
    assert_one_clear_error(result, "cannot write output here", "is a file")


def test_a_binary_log_is_named_as_not_a_training_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_bytes(bytes(range(256)) * 4)
    assert_one_clear_error(invoke(["report", run]), "not a medseg training log")


def test_label_ids_given_twice_are_refused_not_renamed(tmp_path):
    from medseg.data.labels import parse_labels
    from medseg.errors import MedsegError

    with pytest.raises(MedsegError, match="label id 1 is given twice \\('liver' and 'spleen'\\)"):
        parse_labels({"1": "liver", "01": "spleen"}, "labels.json")
    with pytest.raises(MedsegError, match="label id 2 is given twice"):
        parse_labels({"liver": 2, "spleen": 2}, "labels.json")


def test_plan_on_a_manifest_with_image_and_label_swapped_names_the_file(tmp_path):
    image = np.random.default_rng(0).integers(-1000, 400, (12, 10, 8)).astype(np.int16)
    label = np.zeros((12, 10, 8), np.uint8)
    label[3:6, 3:6, 2:5] = 1
    write_nifti(tmp_path / "image.nii.gz", image)
    write_nifti(tmp_path / "label.nii.gz", label)
    manifest = tmp_path / "dataset.json"
    manifest.write_text(json.dumps({"labels": {"0": "background", "1": "liver"},
                                    "training": [{"image": "label.nii.gz",
                                                  "label": "image.nii.gz"}]}))
    result = invoke(["plan", "--manifest", manifest])
    assert_one_clear_error(result, "image.nii.gz: label values")
