"""What fededge knows about each dataset before loading it: shapes, classes, counts.

Model builders and scenario validation read :func:`dataset_info` instead of
loading pixels. The normalisation constants are the customary ones (MNIST and
Fashion-MNIST from the torchvision examples, CIFAR-10 per-channel statistics of
the training set); ImageFolder statistics are computed from the train split
when it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from fededge.data.sources import ImageFolderSource, find_imagefolder
from fededge.errors import DataError

__all__ = [
    "BUILTIN_DATASETS",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "KNOWN_DATASETS",
    "MNIST_CLASSES",
    "DatasetInfo",
    "Split",
    "check_name",
    "check_split",
    "dataset_info",
]

Split = Literal["train", "test"]

KNOWN_DATASETS: Final[tuple[str, ...]] = ("mnist", "fashion-mnist", "cifar10", "imagefolder")
"""Names accepted by :func:`load_dataset` and :func:`dataset_info`."""

MNIST_CLASSES: Final = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)  # fmt: skip
FASHION_MNIST_CLASSES: Final = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES: Final = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes
    ----------
    name : str
        One of :data:`KNOWN_DATASETS`.
    num_classes : int
        Number of classes; labels are ``0 .. num_classes - 1``.
    channels : int
        1 (grey) or 3 (RGB).
    image_size : int
        Side of the square images in pixels (28 or 32 for the built-in sets).
    train_size, test_size : int
        Number of samples per split (0 for an ImageFolder without that split).
    classes : tuple[str, ...]
        Class names in label order (torchvision's names).
    mean, std : tuple[float, ...] or None
        Per-channel normalisation of pixels in [0, 1]; ``None`` for an
        ImageFolder, whose statistics are computed when its train split loads.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    train_size: int
    test_size: int
    classes: tuple[str, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"{self.name}: {self.num_classes} classes declared, {len(self.classes)} names given"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"{self.name}: channels must be 1 or 3, got {self.channels}")
        if self.image_size < 1:
            raise ValueError(f"{self.name}: image_size must be >= 1, got {self.image_size}")

    def num_samples(self, split: Split) -> int:
        """Number of samples in ``split``."""
        return self.train_size if split == "train" else self.test_size


BUILTIN_DATASETS: Final[dict[str, DatasetInfo]] = {
    "mnist": DatasetInfo("mnist", 10, 1, 28, 60_000, 10_000, MNIST_CLASSES, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, 1, 28, 60_000, 10_000, FASHION_MNIST_CLASSES, (0.2860,), (0.3530,)
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        3,
        32,
        50_000,
        10_000,
        CIFAR10_CLASSES,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}


def check_name(name: str) -> str:
    """Return ``name`` if it is in :data:`KNOWN_DATASETS`, else raise DataError."""
    if name not in KNOWN_DATASETS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(KNOWN_DATASETS)}")
    return name


def check_split(split: str) -> Split:
    """Return ``split`` if it is ``"train"`` or ``"test"``, else raise DataError."""
    if split == "train":
        return "train"
    if split == "test":
        return "test"
    raise DataError(f"unknown split {split!r}: expected 'train' or 'test'")


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Describe a dataset without decoding its images.

    Parameters
    ----------
    name : str
        One of :data:`KNOWN_DATASETS`.
    data_dir : str or Path, optional
        Needed only for ``"imagefolder"``: its root (with ``train/`` and
        ``test/``), a zip of it, or one split folder. The folder is listed and
        one image header is read; every image is assumed to share that size
        (:func:`load_dataset` checks them all).

    Returns
    -------
    DatasetInfo

    Raises
    ------
    DataError
        Unknown name; ``"imagefolder"`` without ``data_dir``, with no images or
        with non-square images.
    """
    if check_name(name) != "imagefolder":
        return BUILTIN_DATASETS[name]
    if data_dir is None:
        raise DataError("dataset 'imagefolder' needs data_dir: the folder with train/ and test/")
    train = find_imagefolder(Path(data_dir).expanduser(), "train")
    classes, train_samples = train.scan()
    test_size = 0
    if train.split is not None:  # a root with train/ (and maybe test/), not a lone split folder
        test = ImageFolderSource(train.root, "test")
        test_size = len(test.scan()[1]) if test.exists() else 0
    height, width = train.image_size_of(train_samples[0][0])
    if height != width:
        raise DataError(
            f"{train.describe()}: images are {height}x{width}; fededge expects square "
            f"images (e.g. 32x32): resize them first"
        )
    return DatasetInfo(
        name="imagefolder",
        num_classes=len(classes),
        channels=3,
        image_size=height,
        train_size=len(train_samples),
        test_size=test_size,
        classes=classes,
    )
