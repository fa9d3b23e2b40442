"""Partitions and device streams."""

import numpy as np
import pytest

from fededge.data.streams import DeviceStream, partition

LABELS = np.repeat(np.arange(10), 100)  # 1,000 instances, 100 per class


def _covers_once(parts: list[np.ndarray], n: int) -> bool:
    merged = np.sort(np.concatenate(parts))
    return bool(np.array_equal(merged, np.arange(n)))


def test_iid_splits_evenly_and_covers_every_instance_once() -> None:
    parts = partition(LABELS, 7, "iid", seed=1)
    assert [len(p) for p in parts] == [143] * 6 + [142]
    assert _covers_once(parts, len(LABELS))
    again = partition(LABELS, 7, "iid", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_shards_give_each_device_few_classes() -> None:
    parts = partition(LABELS, 10, "shards", seed=0, shards_per_device=2)
    assert _covers_once(parts, len(LABELS))
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_balanced() -> None:
    skewed = partition(LABELS, 5, "dirichlet", seed=0, alpha=0.05, min_size=1)
    flat = partition(LABELS, 5, "dirichlet", seed=0, alpha=1000.0, min_size=1)
    assert _covers_once(skewed, len(LABELS)) and _covers_once(flat, len(LABELS))

    def top_class_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))

    assert top_class_share(skewed) > 0.5
    assert top_class_share(flat) < 0.2


def test_partition_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="devices"):
        partition(LABELS, 2000, "iid", seed=0)
    with pytest.raises(ValueError, match="unknown partition"):
        partition(LABELS, 2, "round-robin", seed=0)  # type: ignore[arg-type]


def test_fixed_stream_delivers_each_instance_once_per_pass() -> None:
    stream = DeviceStream(indices=np.arange(10), rate=4, seed=3, passes=2)
    rounds = [stream.next_round() for _ in range(6)]
    assert [len(r) for r in rounds] == [4, 4, 4, 4, 4, 0]
    delivered = np.concatenate(rounds)
    assert np.array_equal(np.sort(delivered[:10]), np.arange(10))  # first pass
    assert np.array_equal(np.sort(delivered[10:]), np.arange(10))  # second pass
    assert stream.exhausted


def test_leftover_queue_carries_and_drop_forgets() -> None:
    queued = DeviceStream(indices=np.arange(20), rate=5, seed=0, leftover="queue")
    first = queued.next_round()
    queued.settle(first[3:])  # 2 arrivals could not be processed
    second = queued.next_round()
    assert np.array_equal(second[:2], first[3:]) and len(second) == 7
    dropped = DeviceStream(indices=np.arange(20), rate=5, seed=0, leftover="drop")
    first = dropped.next_round()
    dropped.settle(first[3:])
    assert len(dropped.next_round()) == 5


def test_poisson_arrivals_vary_deterministically_and_state_round_trips() -> None:
    a = DeviceStream(indices=np.arange(10_000), rate=50, seed=9, process="poisson")
    counts = [len(a.next_round()) for _ in range(20)]
    assert len(set(counts)) > 3 and 30 < np.mean(counts) < 70
    b = DeviceStream(indices=np.arange(10_000), rate=50, seed=9, process="poisson")
    b.load_state(a.state())
    assert np.array_equal(a.next_round(), b.next_round())
