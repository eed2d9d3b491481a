"""MONAI Model Zoo bundles by name: `--model monai:NAME`, `medseg download monai:NAME`.

The zoo publishes every release of every bundle in models/model_info.json (its archive's URL
and SHA-1 checksum); medseg reads that list, takes the newest release, checks the archive
against its checksum and installs it as every other model (medseg.models.download). A bundle
MONAI itself fetched (its bundle folder, torch hub's bundle/) is used where it is."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError
from medseg.models.download import Archive, fetch, install, is_offline, medseg_home, source_url

SCHEME = "monai:"
MODEL_INFO = Archive("https://raw.githubusercontent.com/Project-MONAI/model-zoo/dev/models/"
                     "model_info.json", "model_info.json")
LICENCE = "Apache-2.0 (the bundle's code; its LICENSE names the training data's terms)"


@dataclass(frozen=True)
class Bundle:
    network: str
    classes: int
    spacing: str
    abdominal: tuple[str, ...]


BTCV = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach",
        "aorta", "inferior_vena_cava", "portal_and_splenic_veins", "pancreas",
        "right_adrenal_gland", "left_adrenal_gland")
# The zoo's abdominal CT bundles whose networks MONAI ships (their README and metadata.json).
BUNDLES = {
    "spleen_ct_segmentation": Bundle("UNet", 2, "1.5 x 1.5 x 2 mm", ("spleen",)),
    "swin_unetr_btcv_segmentation": Bundle("SwinUNETR", 14, "1.5 x 1.5 x 2 mm", BTCV),
    "wholeBody_ct_segmentation": Bundle("SegResNet", 105, "1.5 mm (or 3 mm)",
                                        (*BTCV, "duodenum", "urinary_bladder")),
}


def is_zoo_name(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(SCHEME)


def bundle_name(ref: str) -> str:
    name = ref[len(SCHEME):]
    if name not in BUNDLES:
        raise MedsegError(f"{ref}: not a Model Zoo bundle medseg lists; it lists "
                          f"{', '.join(SCHEME + b for b in BUNDLES)} (`medseg models`)")
    return name


def bundles_home() -> Path:
    return medseg_home() / "bundles"


def monai_bundle_dir() -> Path:
    """Where MONAI's own `monai.bundle.download` puts bundles (torch hub's bundle folder)."""
    import torch

    return Path(torch.hub.get_dir()) / "bundle"


def installed_bundle(ref: str) -> Path | None:
    name = bundle_name(ref)
    for home in (monai_bundle_dir(), bundles_home()):
        if (home / name / "configs").is_dir():
            return home / name
    return None


def zoo_folder(ref: str, offline: bool = False, progress: bool = True) -> Path:
    """The bundle's folder: installed already, or its newest release fetched and installed."""
    found = installed_bundle(ref)
    if found is not None:
        return found
    name = bundle_name(ref)
    if is_offline(offline):
        raise MedsegError(f"{ref}: not installed, and medseg is offline (--offline or "
                          f"MEDSEG_OFFLINE); fetch the bundle's archive (the newest {name}_v*.zip "
                          f"in {source_url(MODEL_INFO)}) and unpack it into {bundles_home()}")
    return install(newest_release(name), bundles_home(), ref, offline, progress)


def newest_release(name: str) -> Archive:
    """The newest release model_info.json lists for a bundle: its URL and SHA-1."""
    with tempfile.TemporaryDirectory(prefix=".medseg-zoo-") as work:
        listing = fetch(source_url(MODEL_INFO), MODEL_INFO, Path(work),
                        "or download the bundle by hand", progress=False)
        try:
            releases = json.loads(listing.read_text())
        except (ValueError, UnicodeDecodeError):
            raise MedsegError(f"{source_url(MODEL_INFO)}: not the Model Zoo's release list "
                              "(not JSON); run again later") from None
    versions = {}
    for key, entry in releases.items():
        if key.startswith(f"{name}_v") and isinstance(entry, dict) and "source" in entry:
            try:
                versions[tuple(int(v) for v in key[len(name) + 2:].split("."))] = entry
            except ValueError:
                continue
    if not versions:
        raise MedsegError(f"{source_url(MODEL_INFO)}: lists no release of {name}")
    newest = versions[max(versions)]
    checksum = newest.get("checksum")
    return Archive(newest["source"], name, checksum=f"sha1:{checksum}" if checksum else None,
                   prefix=False)
