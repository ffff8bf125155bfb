"""Checkpoint files: cache folder, download with progress bar, SHA-256 check."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from maskml.errors import MaskmlError


def cache_dir() -> Path:
    """$MASKML_HOME, or ~/.cache/maskml."""
    return Path(os.environ.get("MASKML_HOME") or Path.home() / ".cache" / "maskml").expanduser()


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, timeout: float = 30.0,
             md5: str | None = None) -> Path:
    """Download `url` to `dest` (through a temporary name, so an interrupted download leaves nothing),
    checking the SHA-256 (or, for releases that publish only that, the MD5) before the file takes
    its final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    hint = (f"Download it by hand from {url} and put it at {dest} (or into the folder MASKML_HOME names), "
            f"or anywhere and give its path: --checkpoint PATH on the command line, checkpoint=PATH in Python, "
            f"CHECKPOINT=PATH with make demo.")
    algorithm, expected = ("sha256", sha256) if sha256 or not md5 else ("md5", md5)
    digest = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise MaskmlError(f"could not download {dest.name} ({reason}). {hint}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if expected and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        label = {"sha256": "SHA-256", "md5": "MD5"}[algorithm]
        raise MaskmlError(f"downloaded {dest.name} has {label} {digest.hexdigest()}, expected {expected}: "
                          f"the file is corrupt or not the official release. {hint}")
    os.replace(partial, dest)
    return dest


def cached_file(filename: str, url: str, sha256: str | None, progress: bool = True, md5: str | None = None) -> Path:
    """Path of `filename` in the cache folder, downloading it there first if it is missing."""
    path = cache_dir() / filename
    if path.is_file():
        return path
    return download(url, path, sha256, progress=progress, md5=md5)
