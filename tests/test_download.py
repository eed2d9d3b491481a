"""Fetching models (`medseg download`, `medseg infer --model NAME`), tested against a local
HTTP server on the loopback address that serves archives in TotalSegmentator's release
layout, made from the nnU-Net test model: progress, clean restarts, checksums, archives that
would write outside their folder, offline use, a missing network, two fetches at once."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import NNUNET_MODEL, run_cli_here

from medseg.errors import MedsegError

ARCHIVE = "Dataset297_TotalSegmentator_total_3mm_1559subj_v204.zip"
FOLDER = "Dataset297_TotalSegmentator_total_3mm_1559subj"
TRAINER = "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
ORGANS = ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta",
          "inferior_vena_cava", "pancreas"]


def release_zip(target: Path, members: dict[str, Path | bytes] | None = None) -> Path:
    """TotalSegmentator's archive layout: FOLDER/TRAINER/{dataset.json, plans.json,
    fold_0/checkpoint_final.pth}, the test model's classes renamed as TotalSegmentator's."""
    dataset = json.loads((NNUNET_MODEL / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(ORGANS)}}
    inside = f"{FOLDER}/{TRAINER}"
    members = members or {f"{inside}/dataset.json": json.dumps(dataset).encode(),
                          f"{inside}/plans.json": NNUNET_MODEL / "plans.json",
                          f"{inside}/fold_0/checkpoint_final.pth":
                          NNUNET_MODEL / "fold_0" / "checkpoint_final.pth"}
    with zipfile.ZipFile(target, "w") as zipped:
        for name, content in members.items():
            if isinstance(content, Path):
                zipped.write(content, name)
            else:
                zipped.writestr(name, content)
    return target


class Server:
    """Files of a folder on 127.0.0.1; `cut` serves only the first half of each file (a
    connection lost mid-download); `requests` counts what was asked for."""

    def __init__(self, folder: Path):
        self.folder, self.cut, self.requests = folder, False, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                server.requests.append(self.path)
                path = server.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if server.cut else data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A loopback mirror serving the release archive; medseg's homes in tmp_path, online."""
    folder = tmp_path / "served"
    folder.mkdir()
    release_zip(folder / ARCHIVE)
    server = Server(folder)
    monkeypatch.setenv("MEDSEG_MIRROR", server.url)
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts"))
    monkeypatch.delenv("MEDSEG_OFFLINE", raising=False)
    yield server
    server.close()


def results(tmp_path: Path) -> Path:
    return tmp_path / "ts" / "nnunet" / "results"


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) \
        if folder.is_dir() else []


def test_download_installs_the_release_in_totalsegmentators_layout(served, tmp_path):
    proc = run_cli_here("download", "totalsegmentator:total_fast")
    assert proc.returncode == 0, proc.stderr
    assert served.requests == [f"/{ARCHIVE}"]
    assert "100%" in proc.stderr  # pooch's progress bar
    installed = results(tmp_path) / FOLDER
    assert (installed / TRAINER / "fold_0" / "checkpoint_final.pth").is_file()
    record = json.loads((installed / ".medseg-download.json").read_text())
    assert record["url"] == f"{served.url}/{ARCHIVE}"
    assert set(record["files"]) == {f"{TRAINER}/dataset.json", f"{TRAINER}/plans.json",
                                    f"{TRAINER}/fold_0/checkpoint_final.pth"}
    listed = json.loads(run_cli_here("models", "--json").stdout)
    fast = next(row for row in listed if row["name"] == "totalsegmentator:total_fast")
    assert fast["installed"] and fast["where"] == str(results(tmp_path))
    assert {"liver", "spleen", "pancreas", "aorta"} <= set(fast["abdominal"])
    again = run_cli_here("download", "totalsegmentator:total_fast")
    assert again.returncode == 0 and served.requests == [f"/{ARCHIVE}"]  # nothing fetched


def test_the_first_infer_fetches_the_model_and_segments_the_real_series(served, tmp_path,
                                                                        real_data):
    """From nothing installed to a mask on the real DICOM series' exact grid."""
    series = real_data / "dcmqi_3slice" / "dicom"
    proc = run_cli_here("infer", "--model", "totalsegmentator:total_fast", "--input", series,
                        "--output", tmp_path / "masks")
    assert proc.returncode == 0, proc.stderr
    assert served.requests == [f"/{ARCHIVE}"]
    mask = nib.load(str(tmp_path / "masks" / "dicom.nii.gz"))
    assert mask.shape == (512, 512, 3)
    labels = json.loads((tmp_path / "masks" / "labels.json").read_text())["labels"]
    assert "liver" in labels.values()
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {int(i) for i in labels}


def test_a_download_cut_short_leaves_nothing_that_looks_installed_and_a_rerun_works(
        served, tmp_path):
    served.cut = True
    proc = run_cli_here("download", "totalsegmentator:total_fast")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{served.url}/{ARCHIVE}: download failed" in proc.stderr
    assert visible(results(tmp_path)) == []
    assert not [p for p in results(tmp_path).iterdir() if p.name.startswith(".medseg-down")
                and p.is_dir()]
    served.cut = False
    assert run_cli_here("download", "totalsegmentator:total_fast").returncode == 0
    assert visible(results(tmp_path)) == [FOLDER]


@pytest.mark.parametrize("damage, message", [
    ("not a zip", "the archive is damaged"),
    ("outside", "would land outside the model's folder"),
    ("another folder", "not one folder Dataset297_"),
])
def test_a_damaged_or_hostile_archive_installs_nothing(served, tmp_path, damage, message):
    archive = served.folder / ARCHIVE
    if damage == "not a zip":
        archive.write_bytes(b"<html>rate limited</html>")
    elif damage == "outside":
        release_zip(archive, {f"{FOLDER}/{TRAINER}/plans.json": b"{}",
                              f"{FOLDER}/../../escaped.txt": b"owned"})
    else:
        release_zip(archive, {"Dataset999_other/plans.json": b"{}"})
    proc = run_cli_here("download", "totalsegmentator:total_fast")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and proc.stderr.count("error: ") == 1  # after the bar
    assert visible(results(tmp_path)) == []
    assert not list(tmp_path.rglob("escaped.txt"))


def test_offline_touches_no_network_and_says_where_to_unpack_by_hand(served, tmp_path,
                                                                     monkeypatch):
    for way in ("flag", "environment"):
        if way == "environment":
            monkeypatch.setenv("MEDSEG_OFFLINE", "1")
        args = ["download", "totalsegmentator:total_fast"] + (["--offline"] if way == "flag"
                                                               else [])
        proc = run_cli_here(*args)
        assert proc.returncode == 2, proc.stderr
        assert f"fetch {served.url}/{ARCHIVE} and unpack it into {results(tmp_path)}" \
            in proc.stderr
    assert served.requests == []


def test_without_a_network_one_line_names_the_url_and_the_folder(served, tmp_path,
                                                                 monkeypatch):
    served.close()  # nothing listens there any more
    proc = run_cli_here("download", "totalsegmentator:total_fast")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"error: {served.url}/{ARCHIVE}: download failed")
    assert f"unpack it into {results(tmp_path)}" in line and "\n" not in line


def test_a_file_changed_after_the_download_is_refused_when_the_model_opens(served, tmp_path):
    from medseg.models.open import open_model

    assert run_cli_here("download", "totalsegmentator:total_fast").returncode == 0
    plans = results(tmp_path) / FOLDER / TRAINER / "plans.json"
    plans.write_text(plans.read_text().replace('"3d_fullres"', '"3d_fullres" ', 1))
    with pytest.raises(MedsegError, match=r"plans\.json: changed since medseg downloaded it"):
        open_model("totalsegmentator:total_fast")


def test_two_fetches_at_once_install_one_whole_folder(served, tmp_path):
    """The second waits for the first's lock, then finds the model installed."""
    command = [sys.executable, "-m", "cli", "download", "totalsegmentator:total_fast"]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outcomes = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outcomes
    assert served.requests == [f"/{ARCHIVE}"]
    assert visible(results(tmp_path)) == [FOLDER]


def test_licensed_and_unknown_names_are_one_line(served):
    proc = run_cli_here("download", "totalsegmentator:tissue_types")
    assert proc.returncode == 2 and "need TotalSegmentator's licence" in proc.stderr
    proc = run_cli_here("download", "totalsegmentator:totl_fast")
    assert proc.returncode == 2 and "did you mean totalsegmentator:total_fast" in proc.stderr
    assert served.requests == []


def test_a_full_disk_during_the_unpack_is_one_line_and_installs_nothing(served, tmp_path,
                                                                        monkeypatch):
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_space)
    proc = run_cli_here("download", "totalsegmentator:total_fast")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "disk full while writing" in proc.stderr
    assert visible(results(tmp_path)) == []
    shutil.rmtree(results(tmp_path), ignore_errors=True)


# --- MONAI Model Zoo bundles ----------------------------------------------------------------

def zoo_release(served_folder: Path, tmp_path: Path, versions=("0.5.8", "0.5.9"),
                checksum: str | None = None) -> None:
    """model_info.json listing releases of spleen_ct_segmentation, and their archives (the
    bundle folder, named as the zoo names it, at the top), as the zoo's hosting lays them out."""
    import hashlib

    from conftest import write_bundle

    bundle = write_bundle(tmp_path / "zoo" / "spleen_ct_segmentation")
    info = {}
    for version in versions:
        archive = served_folder / f"spleen_ct_segmentation_v{version}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted(bundle.rglob("*")):
                if path.is_file():
                    zipped.write(path, str(path.relative_to(bundle.parent)))
        info[f"spleen_ct_segmentation_v{version}"] = {
            "checksum": checksum or hashlib.sha1(archive.read_bytes()).hexdigest(),
            "source": "https://github.com/Project-MONAI/model-zoo/releases/download/"
                      f"hosting_storage_v1/{archive.name}"}
    (served_folder / "model_info.json").write_text(json.dumps(info))


@pytest.fixture
def zoo(served, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no bundle MONAI fetched
    zoo_release(served.folder, tmp_path)
    return served


def test_a_zoo_bundle_is_fetched_at_its_newest_release_checked_and_run(zoo, tmp_path,
                                                                        real_data):
    proc = run_cli_here("infer", "--model", "monai:spleen_ct_segmentation", "--input",
                        real_data / "dcmqi_3slice" / "dicom", "--output", tmp_path / "masks")
    assert proc.returncode == 0, proc.stderr
    assert zoo.requests == ["/model_info.json", "/spleen_ct_segmentation_v0.5.9.zip"]
    installed = tmp_path / "home" / "bundles" / "spleen_ct_segmentation"
    assert (installed / "configs" / "inference.json").is_file()
    assert nib.load(str(tmp_path / "masks" / "dicom.nii.gz")).shape == (512, 512, 3)
    listed = json.loads(run_cli_here("models", "--json").stdout)
    row = next(r for r in listed if r["name"] == "monai:spleen_ct_segmentation")
    assert row["installed"] and row["abdominal"] == ["spleen"]


def test_a_zoo_archive_that_does_not_match_its_published_checksum_installs_nothing(
        served, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    zoo_release(served.folder, tmp_path, checksum="0" * 40)
    proc = run_cli_here("download", "monai:spleen_ct_segmentation")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "does not match its published checksum" in proc.stderr
    assert not (tmp_path / "home" / "bundles" / "spleen_ct_segmentation").exists()
