"""Hash-checked (sha256 or xxh128) downloads into a local cache; offline messages say what to fetch and where.

The cache is ``$PATHSEG_CACHE`` if set, else ``$XDG_CACHE_HOME/pathseg``, else ``~/.cache/pathseg``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from pathseg.errors import PathsegError
from pathseg.progress import ProgressCallback

CHUNK = 1 << 20


class DownloadError(PathsegError):
    """A download failed or its content did not match the expected hash."""


def cache_dir() -> Path:
    """The pathseg cache directory (created on first use)."""
    env = os.environ.get("PATHSEG_CACHE")
    if env:
        base = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "pathseg"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _hasher(algorithm: str):
    if algorithm == "xxh128":
        try:
            import xxhash
        except ImportError as exc:  # pragma: no cover - xxhash is a dependency
            raise DownloadError("xxh128 hashes need the 'xxhash' package (pip install xxhash)") from exc
        return xxhash.xxh128()
    return hashlib.new(algorithm)


def split_hash(known_hash: str) -> tuple[str, str]:
    """``"sha256:ab.."`` / ``"xxh128:cd.."`` / bare hex (sha256) -> (algorithm, lower-case hex)."""
    algorithm, _, digest = known_hash.rpartition(":")
    return (algorithm or "sha256").lower(), digest.lower()


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256``, ``xxh128``, or any :mod:`hashlib` name), read in 1 MiB chunks."""
    h = _hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, known_hash: str) -> bool:
    """True if ``path`` exists and matches ``known_hash`` (``algo:hex``, or bare hex for sha256)."""
    algorithm, digest = split_hash(known_hash)
    return Path(path).is_file() and file_hash(path, algorithm) == digest


def download(
    url: str,
    dest: str | os.PathLike,
    known_hash: str,
    *,
    timeout: float = 30.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and check it against ``known_hash`` (``algo:hex``; bare hex = sha256).

    The file is written to ``dest`` + ``.part`` and renamed only once its hash matches, so ``dest`` is never a
    half-written or wrong file. Raises :class:`DownloadError` naming the URL and reason on any failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    algorithm, expected = split_hash(known_hash)
    h = _hasher(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total, dest.name)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not download {url}: {reason}") from exc
    digest = h.hexdigest()
    if digest != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {algorithm} mismatch (expected {expected}, got {digest}); file discarded")
    os.replace(part, dest)
    return dest


def install_local(src: str | os.PathLike, dest: str | os.PathLike, known_hash: str) -> Path:
    """Copy a user-supplied file into the cache after checking its hash."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise DownloadError(f"{src}: file not found")
    algorithm, expected = split_hash(known_hash)
    digest = file_hash(src, algorithm)
    if digest != expected:
        raise DownloadError(f"{src}: {algorithm} mismatch (expected {expected}, got {digest})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, part)
    os.replace(part, dest)
    return dest
