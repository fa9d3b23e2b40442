"""In-memory image dataset with vectorised normalisation and CIFAR-style augmentation.

Images stay as raw ``uint8`` pixels (N, C, H, W) — a quarter of the memory of
``float32`` and, when loaded from the cache, memory-mapped and shared by every
process on the machine. Each batch is normalised on the fly:
``x = (raw / 255 - mean) / std``, computed as ``raw * scale + shift`` with
``scale = 1 / (255 std)`` and ``shift = -mean / std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "random_crop_flip"]


def random_crop_flip(
    raw: Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Zero-pad, randomly crop back to size and randomly flip a batch of images.

    The batch form of torchvision's ``RandomCrop(size, padding=padding)``
    followed by ``RandomHorizontalFlip(p=0.5)``: each image is padded with
    ``padding`` zero pixels on every side, a window of the original size is cut
    at a uniform offset in ``0 .. 2 * padding`` (each axis), and the window is
    mirrored left-right with probability 0.5. Draws come from ``generator`` in
    a fixed order (row offsets, column offsets, flips), so the result is
    deterministic given its state.

    Parameters
    ----------
    raw : Tensor
        Images (B, C, H, W) of any dtype; pad with zeros in *raw* pixel space
        (as torchvision does) by passing the ``uint8`` pixels, not normalised ones.
    padding : int, default 4
        Pixels of zero padding on each side; 0 leaves only the flip.
    generator : torch.Generator, optional
        Source of randomness; the global torch generator when omitted.

    Returns
    -------
    Tensor
        Augmented images, same shape and dtype as ``raw``.

    Raises
    ------
    ValueError
        If ``raw`` is not 4-dimensional or ``padding`` is negative.
    """
    if raw.ndim != 4:
        raise ValueError(f"raw must be (B, C, H, W), got shape {tuple(raw.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = raw.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = F.pad(raw, (padding, padding, padding, padding)).reshape(b, c, hp * wp)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)  # (B,)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)  # (B,)
    flip = torch.rand(b, generator=generator) < 0.5  # (B,)
    col = torch.arange(w)
    rows = top[:, None] + torch.arange(h)  # (B, H)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - col, col)  # (B, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)  # (B, 1, H*W)
    return padded.gather(2, flat.expand(b, c, h * w)).reshape(b, c, h, w)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """A labelled image dataset held in memory as ``uint8`` pixels.

    Parameters
    ----------
    images : Tensor
        Raw pixels, ``uint8`` (N, C, H, W).
    labels : Tensor
        Class indices, ``int64`` (N,), in ``0 .. len(classes) - 1``.
    classes : Sequence[str]
        Class names; ``classes[k]`` is the name of label ``k``.
    mean, std : Sequence[float]
        Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    augment : bool, default False
        Apply :func:`random_crop_flip` to every sample or batch drawn.
    name : str, default ""
        Dataset name, e.g. ``"cifar10"``.
    split : str, default ""
        ``"train"`` or ``"test"``.
    source : str, default ""
        Where the pixels came from, for messages and logs.
    padding : int, default 4
        Padding of the random crop when ``augment`` is on.

    Attributes
    ----------
    generator : torch.Generator or None
        Randomness for ``__getitem__`` (``None``: torch's global generator).
        ``batch`` takes its generator as an argument instead.

    Raises
    ------
    ValueError
        If the tensors have the wrong dtype or shape, or mean/std do not match
        the channel count.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        classes: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        name: str = "",
        split: str = "",
        source: str = "",
        padding: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be an int64 tensor ({images.shape[0]},), "
                f"got {labels.dtype} with shape {tuple(labels.shape)}"
            )
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}), "
                f"got {len(mean)} and {len(std)}"
            )
        if min(std) <= 0:
            raise ValueError(f"std must be > 0 in every channel, got {tuple(std)}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.images = images
        self.labels = labels
        self.classes: tuple[str, ...] = tuple(classes)
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.augment = augment
        self.name = name
        self.split = split
        self.source = source
        self.padding = padding
        self.generator: torch.Generator | None = None
        std_t = torch.tensor(self.std, dtype=torch.float32).view(1, channels, 1, 1)
        mean_t = torch.tensor(self.mean, dtype=torch.float32).view(1, channels, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)  # (1, C, 1, 1)
        self._shift = -mean_t / std_t  # (1, C, 1, 1)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels per image (1 for MNIST-like data, 3 for RGB)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return sample ``index`` as (normalised float32 (C, H, W), label)."""
        x, y = self.batch(torch.tensor([index]), self.generator)
        return x[0], int(y[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={self.num_classes}, "
            f"augment={self.augment})"
        )

    def normalise(self, raw: Tensor) -> Tensor:
        """Turn raw ``uint8`` pixels (B, C, H, W) into normalised ``float32``."""
        return raw.to(torch.float32).mul_(self._scale).add_(self._shift)

    def batch(
        self, indices: Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Gather, augment (when enabled) and normalise a whole batch at once.

        Parameters
        ----------
        indices : Tensor or Sequence[int]
            Sample indices (B,).
        generator : torch.Generator, optional
            Randomness for the augmentation; results are deterministic given
            its state. The global torch generator when omitted.

        Returns
        -------
        tuple[Tensor, Tensor]
            Images ``float32`` (B, C, H, W) and labels ``int64`` (B,).
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        raw = self.images[idx]  # (B, C, H, W) uint8
        if self.augment:
            raw = random_crop_flip(raw, self.padding, generator)
        return self.normalise(raw), self.labels[idx]
