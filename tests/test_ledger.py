"""Ledger arithmetic and conversion."""

import math

import pytest

from fededge.cost.ledger import MAC_FIELDS, Ledger


def _ledger(**kw: float) -> Ledger:
    return Ledger(**kw)  # type: ignore[arg-type]


def test_spent_and_saving_add_every_overhead() -> None:
    # Prepare: 10 MACs in each kind, a baseline of 200.
    ledger = _ledger(baseline_macs=200, trained=4, **{name: 10 for name in MAC_FIELDS})
    # Execute / Assert: 7 kinds x 10 = 70 spent, saving 1 - 70/200.
    assert ledger.spent_macs == 70
    assert ledger.saved_macs == 130
    assert ledger.computation_saved == pytest.approx(0.65)


def test_a_ledger_that_trained_nothing_claims_no_saving() -> None:
    ledger = _ledger(baseline_macs=200, streamed=1, filter_forward_macs=5)
    assert ledger.spent_macs == 5 and ledger.trained == 0
    assert ledger.saved_macs == 0 and ledger.computation_saved == 0.0
    assert ledger.computation_saved_32eq == 0.0


def test_ledgers_add_up_and_budgets_stay_infinite() -> None:
    a = _ledger(streamed=3, trained=2, main_forward_macs=5, baseline_macs=9, wall_s=1.5)
    b = _ledger(streamed=4, trained=1, main_forward_macs=7, baseline_macs=11, wall_s=0.5)
    total = a + b
    assert (total.streamed, total.trained, total.main_forward_macs) == (7, 3, 12)
    assert total.wall_s == pytest.approx(2.0)
    assert math.isinf(total.budget_macs)
    a += b
    assert a.baseline_macs == 20


def test_metrics_round_trip_and_missing_key_is_named() -> None:
    ledger = _ledger(streamed=5, trained=2, loss_sum=1.25, main_grad_input_macs=8, budget_macs=1e9)
    metrics = ledger.to_metrics()
    assert metrics["spent_macs"] == 8.0
    assert Ledger.from_metrics(metrics) == ledger
    del metrics["trained"]
    with pytest.raises(KeyError, match="trained"):
        Ledger.from_metrics(metrics)


def test_empty_ledger_has_no_saving_and_nan_loss() -> None:
    ledger = Ledger()
    assert ledger.computation_saved == 0.0
    assert math.isnan(ledger.mean_loss)
