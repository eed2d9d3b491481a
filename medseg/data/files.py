"""Files medseg reads and writes, whatever they hold: what a scan file's name means (its
suffix, its case name), JSON files, and output that appears whole or not at all (atomic
writes, staged case folders, and the checks that keep outputs away from inputs and from
files medseg did not write)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from medseg.errors import MedsegError, OutputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
NNUNET_CHANNEL = "_0000"
FORMATS = ", ".join(SCAN_SUFFIXES) + " or a DICOM series folder"


def scan_suffix(path: Path) -> str:
    """The recognised suffix of a scan file ('' for a DICOM folder)."""
    name = path.name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s)), "")


def case_name(path: Path) -> str:
    """A scan's case name: file name without suffix (and nnU-Net's _0000), or the folder name."""
    path = Path(path)
    name = path.name if path.is_dir() else path.name[: len(path.name) - len(scan_suffix(path))]
    return name[: -len(NNUNET_CHANNEL)] if name.endswith(NNUNET_CHANNEL) else name


# How much of a target's name its temporary file or staging folder repeats.
TEMP_NAME_CHARS = 100
_FREE_SPACE = "free space or choose another output folder"
_FULL = {errno.ENOSPC: ("disk full", _FREE_SPACE),
         errno.EDQUOT: ("disk quota exceeded", _FREE_SPACE),
         errno.EFBIG: ("over this process's file-size limit",
                       "raise the limit (ulimit -f) or choose another output folder")}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def output_error(path: Path, exc: OSError) -> OutputError:
    """One line for a failed write: the file (or folder), the reason, and what to do."""
    if exc.errno in _FULL:
        reason, fix = _FULL[exc.errno]
        return OutputError(f"{path}: {reason} while writing ({exc.strerror}); nothing "
                           f"half-written is left: {fix}, then run again")
    return OutputError(f"{path}: cannot write output here ({exc.strerror}); choose another "
                       "output folder or fix its permissions")


def _write_failure(exc: BaseException) -> OSError | None:
    """The OSError of a full disk, a file-size limit or a refused write behind `exc`, also
    where a writer re-raised it as another exception (pydicom wraps it, keeping the cause)."""
    while exc is not None:
        if isinstance(exc, OSError) and (exc.errno in _FULL or exc.errno in _DENIED):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def check_name_fits(path: Path) -> None:
    """A file name the output folder's file system can hold, or one line naming it: a case
    whose name is too long fails alone, instead of being blamed on the folder."""
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("/"))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(path.name))
    if size > limit:
        raise MedsegError(f"{path}: this output's name is {size} bytes, longer than the file "
                          f"system allows ({limit}); rename the scan it is named after")


def check_writable(folder: Path) -> None:
    """Fail before any work if outputs could not be written to `folder` (created later)."""
    folder = Path(folder).absolute()
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
    except OSError as exc:  # e.g. ENAMETOOLONG: exists() raises for such names
        raise output_error(folder, exc) from None
    if not existing.is_dir():
        raise OutputError(f"{folder}: cannot write output here ({existing} is a file); choose "
                          "another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise output_error(folder, OSError(errno.EACCES, os.strerror(errno.EACCES)))


def make_writable_folder(folder: Path) -> Path:
    """A folder that is there and takes files (made if need be; a cache, not an output), or
    one line saying why not: a read-only or virtual file system such as /proc, no permission,
    a file in the way."""
    folder = Path(folder)
    check_writable(folder)  # names a file in the way
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"))


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything but a regular file of this user's: a folder, a device, a
    FIFO, a link, or another user's file stays as it is."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    kind = next((name for test, name in _KINDS if test(info.st_mode)), None)
    if kind is not None:
        raise OutputError(f"{path}: is {kind}, not a file medseg writes; refusing to replace it: "
                          "choose another output path")
    if info.st_uid != os.getuid():
        raise OutputError(f"{path}: belongs to another user (uid {info.st_uid}); refusing to "
                          "replace it: choose another output path")


def check_apart(inputs: Path, output: Path, what: str = "input") -> None:
    """Refuse an output that is, contains or lies inside an input: writing there would replace
    the input's files, or put outputs where the next run reads inputs."""
    source, target = Path(inputs).resolve(), Path(output).resolve()
    if source == target:
        relation = "is"
    elif target.is_relative_to(source):
        relation = "lies inside"
    elif source.is_relative_to(target):
        relation = "contains"
    else:
        return
    raise MedsegError(f"{output}: the output folder {relation} the {what} {inputs}; outputs would "
                      f"overwrite or mix with it: choose an output folder apart from the {what}")


def check_not_input(output: Path, inputs: list[Path]) -> None:
    """Refuse an output file that is one of the command's own inputs (--overwrite or not)."""
    target = Path(output).resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise MedsegError(f"{output}: is an input of this command ({source}); writing there "
                              "would destroy it: choose another output path")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    Only a regular file of this user's is ever replaced (check_replaceable). A full disk or a
    refused write raises OutputError; the temporary file is removed either way.
    """
    path = Path(path)
    check_replaceable(path)
    # The temp name ends like the target so writers that go by suffix (nibabel: .gz) still work.
    suffix = ".part" + (scan_suffix(path) or path.suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The target's name, cut short: a name near the file system's limit must not overflow
        # in its temp, and a temp still says what it was for.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:TEMP_NAME_CHARS]}.", suffix=suffix,
                                   dir=path.parent)
    except OSError as exc:
        raise output_error(path.parent, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give outputs the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except Exception as exc:
        failure = _write_failure(exc)
        if failure is not None:
            raise output_error(path, failure) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_outputs(folder: Path, last: str,
                   before_move: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a hidden folder inside `folder` to write one case's files into; when the block
    succeeds they move into `folder`, the file named `last` (the mask, which marks the case
    done) after all others. `before_move(folder / last)` may refuse the move at that moment
    (a file someone else put there meanwhile). On an error or Ctrl-C nothing of the case is
    left; a killed process leaves at most the hidden folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{last[:TEMP_NAME_CHARS]}.", suffix=".stage",
                                      dir=folder))
    except OSError as exc:
        raise output_error(folder, exc) from None
    try:
        try:
            yield stage
        except OutputError as exc:  # name the file where it would have appeared
            raise OutputError(str(exc).replace(str(stage), str(folder))) from None
        written = sorted(stage.iterdir(), key=lambda p: p.name == last)
        if before_move is not None:
            before_move(folder / last)
        for path in written:
            check_replaceable(folder / path.name)
        for path in written:
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on an output folder (made if need be) while a run writes into
    it: a second run into the same folder is refused in one line instead of interleaving.
    A folder this made and left empty is removed again."""
    folder = Path(folder)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise output_error(folder, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{folder}: another medseg run is writing into this folder; wait "
                              "for it to finish, or choose another output folder") from None
        yield
    finally:
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: it holds what the run wrote
                folder.rmdir()


def sha256_of(*paths: Path) -> str:
    """The SHA-256 (hex) of the files' contents, one after the other, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file holding an object, or a one-line MedsegError naming it."""
    if not path.is_file():
        raise MedsegError(f"{path}: {'a folder, not a' if path.is_dir() else 'no such'} JSON "
                          "file; check the path")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: not valid JSON ({exc}); fix it there") from None
    except RecursionError:
        raise MedsegError(f"{path}: nested too deeply to be a data set or plan; fix the "
                          "file") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: expected a JSON object at the top level, like "
                          "{\"labels\": ..., \"training\": [...]}")
    return data


def write_json(data: dict, path: Path) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_png(figure, path: Path, dpi: int = 90) -> Path:
    """Write a matplotlib figure as PNG atomically."""
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
