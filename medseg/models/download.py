"""Fetching a model's release archive and installing it, safely: pooch downloads it (with a
progress bar, into a temporary file that replaces nothing until it is whole, its checksum
checked where the source publishes one), the archive is unpacked into a temporary folder
beside the destination after every member is checked to land inside it, and the model's
folder is moved into place only when complete, so an interrupted download or unzip never
leaves a folder that looks installed. One process installs into a folder at a time; another
waits, then finds the model there. A record of every file's SHA-256 is written with the
model, and a changed file is refused when the model is opened.

Offline (--offline, MEDSEG_OFFLINE=1) nothing is fetched; MEDSEG_MIRROR=URL fetches every
archive from URL/<archive name> instead (a hospital's own copy, or a test server).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medseg.data.files import output_error, sha256_of, write_json
from medseg.errors import MedsegError, first_line

log = logging.getLogger("medseg")

HOME_ENV, OFFLINE_ENV, MIRROR_ENV = "MEDSEG_HOME", "MEDSEG_OFFLINE", "MEDSEG_MIRROR"
RECORD = ".medseg-download.json"  # written into each installed model folder
LOCK = ".medseg-download.lock"


@dataclass(frozen=True)
class Archive:
    """One release archive and the folder it unpacks into."""

    url: str
    folder: str  # the one top-level folder it holds: this name, or (prefix) starting with it
    size: int | None = None  # bytes, as the source lists it (None: unknown until fetched)
    checksum: str | None = None  # "sha1:..." or "sha256:..." as the source publishes it
    prefix: bool = True


def medseg_home() -> Path:
    """Where medseg keeps what it fetches (MEDSEG_HOME, default ~/.medseg)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".medseg")


def is_offline(asked: bool = False) -> bool:
    """--offline, or MEDSEG_OFFLINE set to anything but 0/false/no."""
    return asked or os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false",
                                                                             "no")


def source_url(archive: Archive) -> str:
    """The archive's URL, or its name under MEDSEG_MIRROR."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    name = archive.url.rsplit("/", 1)[-1]
    return f"{mirror.rstrip('/')}/{name}" if mirror else archive.url


def installed(home: Path, archive: Archive) -> Path | None:
    """The archive's model folder under `home`, if it is there (whole: folders appear only
    when complete)."""
    if not home.is_dir():
        return None
    found = sorted(p for p in home.glob(f"{archive.folder}*") if p.is_dir()
                   and (archive.prefix or p.name == archive.folder))
    return found[0] if found else None


def install(archive: Archive, home: Path, what: str, offline: bool = False,
            progress: bool = True) -> Path:
    """The archive's model folder under `home`: there already, or fetched and unpacked."""
    found = installed(home, archive)
    if found is not None:
        return found
    url = source_url(archive)
    by_hand = (f"fetch {url} and unpack it into {home} (it holds {archive.folder}.../), or run "
               "`medseg download` on a machine with the network")
    if is_offline(offline):
        raise MedsegError(f"{what}: not installed, and medseg is offline (--offline or "
                          f"{OFFLINE_ENV}); {by_hand}")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(home, exc) from None
    with install_lock(home):
        found = installed(home, archive)  # another process installed it while this one waited
        if found is not None:
            return found
        with _work_folder(home) as work:
            zip_path = fetch(url, archive, work, by_hand, progress)
            unpacked = unpack(zip_path, archive, work / "unpacked", url)
            write_json(_record(unpacked, url, zip_path), unpacked / RECORD)
            target = home / unpacked.name
            os.replace(unpacked, target)  # the folder appears whole, or not at all
    log.info("installed %s into %s", what, target)
    return target


@contextlib.contextmanager
def install_lock(home: Path) -> Iterator[None]:
    """One process installs into `home` at a time; the others wait for it."""
    with open(home / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another medseg download into {home} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _work_folder(home: Path) -> Iterator[Path]:
    """A temporary folder beside the destination (one file system: the move is atomic),
    removed whatever happens; a full disk is one line."""
    try:
        with tempfile.TemporaryDirectory(prefix=".medseg-download-", dir=home) as work:
            yield Path(work)
    except OSError as exc:
        raise output_error(home, exc) from None


def fetch(url: str, archive: Archive, work: Path, by_hand: str, progress: bool) -> Path:
    """The archive downloaded into `work` by pooch (a temporary file until whole, the
    published checksum checked), or one line naming the URL."""
    import pooch
    import requests

    logging.getLogger("pooch").setLevel(logging.WARNING)
    name = url.rsplit("/", 1)[-1]
    try:
        return Path(pooch.retrieve(url, known_hash=archive.checksum, fname=name, path=work,
                                   downloader=pooch.HTTPDownloader(progressbar=progress)))
    except requests.RequestException as exc:
        raise MedsegError(f"{url}: download failed ({first_line(exc)[:200]}); nothing was "
                          f"installed: check the network (or set {MIRROR_ENV}), or {by_hand}"
                          ) from None
    except ValueError as exc:  # pooch: the checksum differs from the published one
        raise MedsegError(f"{url}: the download does not match its published checksum "
                          f"({first_line(exc)[:200]}); nothing was installed: run again, and "
                          "if it persists the release has changed") from None


def unpack(zip_path: Path, archive: Archive, into: Path, url: str) -> Path:
    """The archive's one top-level model folder, unpacked under `into`, once every member is
    known to land inside it (no absolute paths, no '..', no links)."""
    try:
        with zipfile.ZipFile(zip_path) as zipped:
            members = zipped.infolist()
            top = _checked_members(members, archive, url)
            zipped.extractall(into)
    except zipfile.BadZipFile as exc:
        raise MedsegError(f"{url}: the archive is damaged ({first_line(exc)}); nothing was "
                          "installed: run again to fetch it anew") from None
    except (EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise MedsegError(f"{url}: the archive cannot be unpacked ({first_line(exc)}); "
                          "nothing was installed: run again to fetch it anew") from None
    folder = into / top
    if not folder.is_dir():
        raise MedsegError(f"{url}: the archive holds no folder {archive.folder}...; it is not "
                          "the model's release archive")
    return folder


def _checked_members(members: list[zipfile.ZipInfo], archive: Archive, url: str) -> str:
    """The one top-level folder every member lies in; members that would land elsewhere (an
    absolute path, '..', a link) are refused before anything is written."""
    tops = set()
    for member in members:
        path = PurePosixPath(member.filename)
        is_link = stat.S_ISLNK(member.external_attr >> 16)
        if path.is_absolute() or ".." in path.parts or is_link or "\\" in member.filename:
            raise MedsegError(f"{url}: the archive's member {member.filename!r} would land "
                              "outside the model's folder; refused, nothing was installed")
        tops.add(path.parts[0])
    top = next(iter(tops)) if len(tops) == 1 else ""
    if not (top.startswith(archive.folder) if archive.prefix else top == archive.folder):
        raise MedsegError(f"{url}: the archive holds {', '.join(sorted(tops)) or 'nothing'}, "
                          f"not one folder {archive.folder}...; it is not the model's release "
                          "archive")
    return top


def _record(folder: Path, url: str, zip_path: Path) -> dict:
    """What was installed from where: the archive's SHA-256 and every file's."""
    return {"url": url, "archive_sha256": sha256_of(zip_path),
            "archive_bytes": zip_path.stat().st_size,
            "files": {str(p.relative_to(folder)): sha256_of(p)
                      for p in sorted(folder.rglob("*")) if p.is_file()}}


def check_unchanged(folder: Path) -> None:
    """A folder medseg installed must hold the files it installed, unchanged; a folder without
    a record (installed by another tool) is taken as it is."""
    record_path = next((p / RECORD for p in (folder, *folder.parents[:2])
                        if (p / RECORD).is_file()), None)
    if record_path is None:
        return
    try:
        recorded = json.loads(record_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MedsegError(f"{record_path}: damaged; run `medseg download` again to reinstall "
                          "the model") from None
    root = record_path.parent
    for name, sha in recorded.items():
        path = root / name
        if not path.is_file() or sha256_of(path) != sha:
            raise MedsegError(f"{path}: {'missing' if not path.is_file() else 'changed'} since "
                              f"medseg downloaded it (the record is {record_path}); delete "
                              f"{root} and run `medseg download` again")
