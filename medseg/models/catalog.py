"""What medseg can fetch and run (`medseg models`, `medseg download`): one row per model,
with its source, network, classes, working spacing, download size, licence, and whether and
where it is installed."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

from medseg.data.labels import canonical_name, load_label_map
from medseg.errors import MedsegError
from medseg.models import totalseg, zoo
from medseg.models.download import installed

# The abdominal organs of the public multi-organ CT data sets (BTCV, AMOS, FLARE22): a row
# names those its model segments.
ABDOMINAL_MAPS = ("btcv", "amos", "flare22")


@dataclass(frozen=True)
class Row:
    name: str
    source: str
    network: str
    classes: int
    abdominal: list[str]
    spacing: str
    download_bytes: int | None  # None: not listed by the source
    licence: str
    fetchable: bool
    installed: bool
    where: str


def abdominal_organs(labels: dict[int, str]) -> list[str]:
    """The model's organs among the abdominal data sets' organs, in its own spelling."""
    known = {canonical_name(n) for spec in ABDOMINAL_MAPS
             for i, n in load_label_map(spec).items() if i}
    return [n for i, n in sorted(labels.items()) if i and canonical_name(n) in known]


def rows() -> list[Row]:
    """Every model `medseg models` lists."""
    classes = totalseg.class_map()
    home = totalseg.weights_home()
    listed = []
    for task_name, task in totalseg.TASKS.items():
        archives = [totalseg.ARCHIVES[d] for d in task.datasets]
        there = [installed(home, a) for a in archives]
        sizes = [a.size for a in archives]
        listed.append(Row(
            name=totalseg.SCHEME + task_name, source="TotalSegmentator 2 release assets",
            network="nnU-Net 3d_fullres" + (f", {len(archives)} parts" if len(archives) > 1
                                           else ""),
            classes=len(classes) - 1, abdominal=abdominal_organs(classes),
            spacing=f"{task.spacing:g} mm",
            download_bytes=sum(sizes) if None not in sizes else None,
            licence=totalseg.LICENCE, fetchable=True, installed=all(there),
            where=str(home)))
    for task_name in totalseg.LICENSED:
        listed.append(Row(
            name=totalseg.SCHEME + task_name, source="TotalSegmentator (licensed weights)",
            network="nnU-Net 3d_fullres", classes=0, abdominal=[], spacing="",
            download_bytes=None, licence="TotalSegmentator licence (academic or commercial)",
            fetchable=False, installed=False, where="not fetched by medseg"))
    for name, bundle in zoo.BUNDLES.items():
        found = zoo.installed_bundle(zoo.SCHEME + name)
        listed.append(Row(
            name=zoo.SCHEME + name, source="MONAI Model Zoo (newest release)",
            network=f"MONAI {bundle.network}", classes=bundle.classes,
            abdominal=list(bundle.abdominal), spacing=bundle.spacing, download_bytes=None,
            licence=zoo.LICENCE, fetchable=True, installed=found is not None,
            where=str(found.parent if found else zoo.bundles_home())))
    return listed


def as_json(listed: list[Row]) -> list[dict]:
    return [asdict(row) for row in listed]


def find(name: str) -> Row:
    """The row a name names, or one line with the closest names."""
    listed = {row.name: row for row in rows()}
    if name in listed:
        return listed[name]
    close = difflib.get_close_matches(name, list(listed), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise MedsegError(f"{name}: not a model medseg fetches{hint}; `medseg models` lists them")


def download(name: str, offline: bool = False, progress: bool = True) -> list[str]:
    """Fetch a listed model (nothing to do where it is installed); returns its folders."""
    row = find(name)
    if zoo.is_zoo_name(name):
        return [str(zoo.zoo_folder(name, offline, progress))]
    if not row.fetchable:
        totalseg.task(name)  # says why, in one line
    return [str(p) for p in totalseg.install_task(name, offline, progress)]
