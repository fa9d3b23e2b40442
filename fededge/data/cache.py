"""On-disk cache of decoded datasets: ``.npy`` arrays written atomically.

Layout: ``<cache_dir>/<name>-<split>-<key>.{images.npy,labels.npy,json}``. The
key hashes the cache format and the identity of the source (resolved path,
size and modification time of every file read), so editing or replacing a
source invalidates its entry; stale entries are left behind (delete the folder
to reclaim space). Every file is written to a temporary name in the same folder
and moved into place with :func:`os.replace`, so concurrent processes (e.g.
several Ray workers loading at once) see either no file or a complete one; the
JSON file is written last and marks an entry complete.

The JSON file also holds a digest (BLAKE2b) of the decoded arrays' bytes;
:meth:`CacheEntry.load` checks it, so an entry whose bytes were changed (a
disk error, an edit, shuffled labels of the right size) is never used: it is
removed and the source decoded again (:func:`fededge.data.loading.load_dataset`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fededge.files import atomic_write

__all__ = [
    "CACHE_FORMAT",
    "CacheEntry",
    "arrays_digest",
    "cache_dir",
    "cache_key",
    "file_identity",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""Bump when decoding changes, so old entries are no longer used (2: digests in the JSON)."""


def arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Hex BLAKE2b of the images' and labels' bytes (with their shapes and dtypes)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (images, labels):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)  # the buffer itself: no copy
    return digest.hexdigest()


def cache_dir() -> Path:
    """Folder for decoded datasets (and torchvision downloads under ``data/``).

    ``$FEDEDGE_CACHE`` if set, else ``$XDG_CACHE_HOME/fededge``, else
    ``~/.cache/fededge``.
    """
    env = os.environ.get("FEDEDGE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fededge"


def file_identity(path: Path) -> str:
    """``resolved path|size|mtime_ns`` of one file: changes when the file does."""
    resolved = path.resolve()
    st = resolved.stat()
    return f"{resolved}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(parts: Iterable[str]) -> str:
    """Short hex digest of the cache format and ``parts``."""
    digest = hashlib.sha256(f"fededge-cache-format={CACHE_FORMAT}".encode())
    for part in parts:
        digest.update(b"\n")
        digest.update(part.encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class CacheEntry:
    """One cached split: images (N, C, H, W) uint8, labels (N,) int64 and metadata."""

    directory: Path
    stem: str

    @property
    def images_path(self) -> Path:
        """``<stem>.images.npy``."""
        return self.directory / f"{self.stem}.images.npy"

    @property
    def labels_path(self) -> Path:
        """``<stem>.labels.npy``."""
        return self.directory / f"{self.stem}.labels.npy"

    @property
    def meta_path(self) -> Path:
        """``<stem>.json``, written last: its presence marks a complete entry."""
        return self.directory / f"{self.stem}.json"

    def load(
        self,
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], dict[str, Any]] | None:
        """Memory-map a complete entry; ``None`` when absent or unreadable.

        Arrays are mapped copy-on-write (``mmap_mode="c"``): pages are shared
        with other processes and a write to the array never reaches the file.
        """
        if not self.meta_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            images = np.load(self.images_path, mmap_mode="c")
            labels = np.load(self.labels_path, mmap_mode="c")
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("ignoring unreadable cache entry %s: %s", self.meta_path, exc)
            return None
        if images.dtype != np.uint8 or labels.dtype != np.int64 or not isinstance(meta, dict):
            logger.warning("removing malformed cache entry %s", self.meta_path)
            self.remove()
            return None
        if meta.get("digest") != arrays_digest(images, labels):
            logger.warning(
                "removing corrupt cache entry %s (its arrays do not match their digest); "
                "decoding the source again",
                self.meta_path,
            )
            self.remove()
            return None
        return images, labels, meta

    def remove(self) -> None:
        """Delete the entry's files (the JSON first: the entry is incomplete at once)."""
        for path in (self.meta_path, self.images_path, self.labels_path):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove %s: %s", path, exc)

    def save(
        self,
        images: npt.NDArray[np.uint8],
        labels: npt.NDArray[np.int64],
        meta: dict[str, Any],
    ) -> bool:
        """Write the entry atomically; log and return ``False`` if the folder is unwritable."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(self.images_path, lambda fh: np.save(fh, images))
            atomic_write(self.labels_path, lambda fh: np.save(fh, labels))
            text = json.dumps({**meta, "digest": arrays_digest(images, labels)}, indent=1).encode()
            atomic_write(self.meta_path, lambda fh: fh.write(text))
        except OSError as exc:
            logger.warning("could not cache %s in %s: %s", self.stem, self.directory, exc)
            return False
        return True
