"""What maskml may write, checked before any work, and the temporary names its files are written under.

    check_outputs(inputs={"VIDEO": "frames/", "--mask-dir": "first/"},
                  folders={"--out": "masks/", "--probs": None}, files={"--overlay": "tracked.mp4"})

maskml writes only the files it names (and replaces only those: an earlier run's results), and
never deletes a file it did not write. An output that is, holds or lies inside an input, two
outputs that are one path or nested, the current folder as an output folder, a file where a
folder is meant (or the reverse), an output nobody can write and an output another maskml process
is writing now: each is refused with one clear MaskmlError, before a model is loaded.

Every file is written whole under a hidden temporary name in its final folder, then renamed:
.maskml.<process id>.<random>.<final name>. A run killed outright (kill -9, power loss) can
leave such files; the next run into that folder (its check_outputs, or a ResultWriter) removes
those whose process has ended, and nothing else.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from maskml.errors import MaskmlError

UMASK = os.umask(0)
os.umask(UMASK)

TEMPORARY_PREFIX = ".maskml."
TEMPORARY_NAME = re.compile(r"\.maskml\.(\d+)\.[^.]+\.(.+)")  # .maskml.<pid>.<random>.<final name>


def temporary_file(path: str | Path) -> Path:
    """A new empty file beside `path` under a temporary name that ends in `path`'s name (so its
    suffix, from which OpenCV picks a container, is kept), with the permissions of a new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}.", suffix=f".{path.name}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    return Path(tmp)


def temporary_folder(path: str | Path) -> Path:
    tmp = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}.", suffix=f".{Path(path).name}",
                           dir=Path(path).parent)
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700 folders
    return Path(tmp)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temporaries(folder: Path) -> Iterator[tuple[Path, int, str]]:
    """(path, process id, final name) of maskml's temporary files and folders in `folder`."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        match = TEMPORARY_NAME.fullmatch(entry.name)
        if match:
            yield entry, int(match.group(1)), match.group(2)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove maskml's temporary files and folders in `folder` left by processes that have ended
    (a run killed outright); returns how many. Nothing else is touched."""
    removed = 0
    for entry, pid, _ in _temporaries(Path(folder)):
        if not _process_alive(pid):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def make_folder(path: str | Path) -> list[Path]:
    """mkdir -p; returns the folders it created, outermost first (for remove_empty_folders)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_folders(created: list[Path]) -> None:
    """Undo make_folder where nothing was written into the folders it created."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): leave it
            return


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Temporary files beside `paths` for the block to write; all take their final names only if
    the block succeeds, otherwise they are removed and the files under the final names stay as they were."""
    temps = []
    try:
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            temps.append(temporary_file(path))
        yield temps
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block succeeds, the files written
    into it move into `path` (which is made if needed), replacing files of the same names and
    leaving every other file there untouched. On failure or Ctrl-C it is removed: `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_folder(path)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)  # a new folder appears complete, in one rename
        else:
            for item in sorted(tmp.iterdir()):
                os.replace(item, path / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def _describe(flag: str, path: str | Path) -> str:
    return f"{flag} {path}" if flag.startswith("-") else f"{flag.lower()} {path}"


def check_outputs(inputs: dict[str, str | Path | None], folders: dict[str, str | Path | None] | None = None,
                  files: dict[str, str | Path | None] | None = None) -> None:
    """Refuse, with one MaskmlError, outputs that could destroy data or fail after the work.

    inputs: {flag or argument name: path} of everything the command reads (files or folders);
    folders: {flag: path} of output folders; files: {flag: path} of output files. None values
    (options not given) are skipped. Nothing is written (whether a folder takes a file is tried
    with a temporary one); what runs killed outright left there is removed."""
    given_inputs = {flag: Path(p) for flag, p in inputs.items() if p is not None}
    outputs = [(flag, Path(p), True) for flag, p in (folders or {}).items() if p is not None]
    outputs += [(flag, Path(p), False) for flag, p in (files or {}).items() if p is not None]
    resolved_inputs = {flag: path.resolve() for flag, path in given_inputs.items()}
    cwd = Path.cwd().resolve()
    seen: list[tuple[str, Path, Path]] = []
    for flag, path, is_folder in outputs:
        where = _describe(flag, path)
        if is_folder and path.exists() and not path.is_dir():
            raise MaskmlError(f"{where} is a file, not a folder: the results go into a folder of their own; "
                              f"choose another name")
        if not is_folder and path.is_dir():
            raise MaskmlError(f"{where} is a folder: give the name of the file to write (inside it or elsewhere)")
        if not is_folder and path.exists() and not path.is_file():  # a rename would replace the device itself
            raise MaskmlError(f"{where} is no regular file (a device or a pipe): give the name of a file")
        resolved = path.resolve()
        for input_flag, input_path in resolved_inputs.items():
            what = _describe(input_flag, given_inputs[input_flag])
            if resolved == input_path:
                raise MaskmlError(f"{where} is the input {what}: choose another name (maskml never writes over "
                                  f"its inputs)")
            if _inside(input_path, resolved):
                raise MaskmlError(f"{where} holds the input {what}: write the results into a folder of their own, "
                                  f"e.g. {flag} {path / 'results'}")
            if _inside(resolved, input_path):
                raise MaskmlError(f"{where} lies inside the input {what}: write the results outside it")
        if is_folder and (resolved == cwd or _inside(cwd, resolved)):
            raise MaskmlError(f"{where} is the current folder (or holds it): write the results into a folder of "
                              f"their own, e.g. {flag} results/")
        for other_flag, other_path, other in seen:
            if resolved == other:
                raise MaskmlError(f"{where} and {_describe(other_flag, other_path)} are the same path: "
                                  f"give each output its own name")
            if _inside(resolved, other) or _inside(other, resolved):
                raise MaskmlError(f"{where} and {_describe(other_flag, other_path)} are nested: give each output "
                                  f"its own place, side by side")
        seen.append((flag, path, resolved))
        _check_writable(where, path if is_folder else path.parent)
        _check_not_busy(where, path, is_folder)


def _check_writable(where: str, folder: Path) -> None:
    """The folder, or the nearest folder above it that exists (where it will be made), takes a new file."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise MaskmlError(f"{where}: {existing} is a link to nowhere: remove it or choose another name")
        existing = existing.parent
    if not existing.is_dir():
        raise MaskmlError(f"{where}: {existing} is a file, so no folder can be made there; choose another name")
    try:  # a real file, as permission bits do not tell (root, read-only mounts, ACLs)
        temporary_file(existing / "write-check").unlink()
    except OSError as exc:
        made = "" if existing == folder else f" (where {folder} would be made)"
        raise MaskmlError(f"{where}: cannot write into {existing}{made}: {exc.strerror or exc}; choose a folder "
                          f"you can write to") from None


def _check_not_busy(where: str, path: Path, is_folder: bool) -> None:
    """No other running maskml is writing this output: none has a temporary file or folder of its
    name beside it or, for a folder, a temporary file in it. Those of ended processes there go."""
    found = [(entry, pid) for entry, pid, name in _temporaries(path.parent) if name == path.name]
    if is_folder:
        found += [(entry, pid) for entry, pid, _ in _temporaries(path)]
    for entry, pid in found:
        if pid != os.getpid() and _process_alive(pid):
            raise MaskmlError(f"{where}: another maskml (process {pid}) is writing it now; wait for it to end "
                              f"or choose another name")
    for folder in (path.parent, path) if is_folder else (path.parent,):
        remove_stale_temporaries(folder)
