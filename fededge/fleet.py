"""A fleet built from a scenario: datasets, partitions, model costs and device rounds.

This is the core behind the Flower apps (``clients/`` and ``server/`` only
adapt it): a :class:`FleetRuntime` holds what every device of a scenario shares
(datasets, partitions, per-instance model costs, one main net and one filter
net reused for every device it hosts), so a worker process loads it once.
:meth:`FleetRuntime.train_round` is one device's round: its tier (profile,
budget, savers), its stream and its local state, trained with the one training
loop (:class:`~fededge.method.training.LocalTrainer`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fededge.config.scenario import Scenario, Tier, data_dir_of
from fededge.cost.ledger import Ledger
from fededge.cost.pricing import net_costs
from fededge.data import ImageDataset, dataset_info, load_dataset
from fededge.data.streams import DeviceStream, partition
from fededge.method.error_map import KernelPlans
from fededge.method.evaluation import evaluate
from fededge.method.training import LocalTrainer
from fededge.models import build_filter, build_model

INITIAL_FILTER_CACHE_BYTES = 32 * 2**20
"""Memory a worker process spends on devices' initial filter weights."""


@dataclass(frozen=True)
class RoundResult:
    """What a device reports after a round."""

    weights: dict[str, Tensor]
    ledger: Ledger
    compute_s: float  # simulated seconds of the profile's compute
    energy_j: float  # simulated joules
    upload_s: float  # simulated upload time of the reply's weights
    download_s: float  # simulated download time of the global weights
    threshold: float  # T_l after the round (nan without EIF)
    dropped: bool  # device was unavailable this round


class FleetRuntime:
    """Everything devices of one scenario share within a process.

    Parameters
    ----------
    scenario : the validated scenario.
    load_test : also load the test set (for central evaluation).
    """

    def __init__(self, scenario: Scenario, *, load_test: bool = False) -> None:
        self.scenario = scenario
        data = scenario.data
        self.info = dataset_info(data.dataset, data_dir_of(scenario))
        self.input_shape = (self.info.channels, self.info.image_size, self.info.image_size)
        self._data_dir = data_dir_of(scenario)
        self.test_data: ImageDataset | None = (
            load_dataset(data.dataset, "test", self._data_dir, download=data.download)
            if load_test
            else None
        )
        self.main_net = self.new_main_net()
        self.filter_net = self._new_filter_net(0)
        self.main_cost, self.filter_cost = net_costs(
            scenario.main_model,
            scenario.filter_model,
            channels=self.info.channels,
            image_size=self.info.image_size,
            num_classes=self.info.num_classes,
        )
        self.weight_names = transported_names(self.main_net)
        self._model_bytes: int = sum(
            int(v.numel()) * 4
            for k, v in self.main_net.state_dict().items()
            if k in self.weight_names
        )
        # EMP's kernel choices, tuned once per process for every device it hosts.
        self.emp_plans = KernelPlans()
        self._initial_filters: OrderedDict[int, tuple[dict[str, Tensor], Tensor]] = OrderedDict()

    @cached_property
    def train_data(self) -> ImageDataset:
        """The training set the devices' streams draw from (loaded on first use)."""
        data = self.scenario.data
        return load_dataset(data.dataset, "train", self._data_dir, download=data.download)

    @cached_property
    def partitions(self) -> list[np.ndarray]:
        """Every device's share of the training set (see :func:`fededge.data.streams.partition`)."""
        data = self.scenario.data
        return partition(
            self.train_data.labels.numpy(),
            self.scenario.num_devices,
            data.partition,
            seed=self.scenario.run.seed,
            alpha=data.dirichlet_alpha,
            shards_per_device=data.shards_per_device,
            min_size=1,
        )

    # ------------------------------------------------------------------ models
    def new_main_net(self) -> nn.Module:
        """The main net, initialised from the scenario's seed (the global model's start)."""
        torch.manual_seed(self.scenario.run.seed)
        return build_model(
            self.scenario.main_model,
            num_classes=self.info.num_classes,
            in_channels=self.info.channels,
            image_size=self.info.image_size,
        )

    def _filter_seed(self, device_id: int) -> int:
        return self.scenario.run.seed * 1_000_003 + device_id + 1

    def _new_filter_net(self, device_id: int) -> nn.Module:
        torch.manual_seed(self._filter_seed(device_id))
        return build_filter(
            self.scenario.filter_model,
            in_channels=self.info.channels,
            image_size=self.info.image_size,
        )

    def initial_filter_state(self, device_id: int) -> dict[str, Tensor]:
        """A device's freshly initialised filter weights (seeded by device id).

        Building the net seeds torch's global generator with the device's seed and
        draws the initial weights from it. The weights and the generator state after
        that are kept for the most recent devices (up to
        ``INITIAL_FILTER_CACHE_BYTES``) and restored on a hit, so a hit leaves the
        process exactly as a build would -- at a tenth of its cost, which exceeds a
        small device's round. Callers must not modify the returned tensors.
        """
        cached = self._initial_filters.get(device_id)
        if cached is not None:
            self._initial_filters.move_to_end(device_id)
            state, rng_state = cached
            torch.set_rng_state(rng_state)
            if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
                torch.cuda.manual_seed_all(self._filter_seed(device_id))
            return state
        state = self._new_filter_net(device_id).state_dict()
        size = sum(t.numel() * t.element_size() for t in state.values())
        capacity = INITIAL_FILTER_CACHE_BYTES // max(size, 1)
        if capacity > 0:
            while len(self._initial_filters) >= capacity:
                self._initial_filters.popitem(last=False)
            self._initial_filters[device_id] = (state, torch.get_rng_state())
        return state

    def model_bytes(self) -> int:
        """Bytes of the transported main-net weights (float32)."""
        return self._model_bytes

    # -------------------------------------------------------------- devices
    def stream(
        self, device_id: int, tier: Tier | None = None, *, local_data: bool = False
    ) -> DeviceStream:
        """Device ``device_id``'s stream (fresh state).

        ``tier``: the tier the device trains under (default: the scenario's tier
        of ``device_id``; a real device's may differ, see
        :func:`fededge.deploy.node_config.device_tier`); ``local_data``: stream
        the whole training set instead of the device's partition (a device with
        its own data).
        """
        tier = tier or self.scenario.tier_of(device_id)
        data = self.scenario.data
        indices = np.arange(len(self.train_data)) if local_data else self.partitions[device_id]
        return DeviceStream(
            indices=indices,
            rate=tier.arrivals_per_round,
            seed=self.scenario.run.seed * 1_000_003 + device_id,
            passes=data.passes,
            process=data.arrival_process,
            leftover=data.leftover,
        )

    def train_round(
        self,
        device_id: int,
        weights: Mapping[str, Tensor],
        server_round: int,
        state: dict[str, Any] | None,
        *,
        tier: Tier | None = None,
        local_data: bool = False,
    ) -> tuple[RoundResult, dict[str, Any]]:
        """Run device ``device_id``'s round and return its result and new local state.

        ``state`` is what the previous round returned (None in the first round):
        stream position and backlog, the trainer's queue, the filter's weights,
        optimizer, T_l and R_TH window. ``tier`` and ``local_data``: as in
        :meth:`stream`.
        """
        scenario = self.scenario
        tier = tier or scenario.tier_of(device_id)
        profile = tier.profile
        seed = scenario.run.seed
        rng = np.random.default_rng([seed, device_id, server_round, 7])
        download_s = profile.download_seconds(self.model_bytes())
        if tier.dropout > 0 and rng.random() < tier.dropout:
            empty = Ledger()
            result = RoundResult(
                weights={},
                ledger=empty,
                compute_s=0.0,
                energy_j=0.0,
                upload_s=0.0,
                download_s=download_s,
                threshold=math.nan,
                dropped=True,
            )
            return result, state or {}

        load_weights(self.main_net, weights)
        eif, emp = tier.eif, tier.emp
        filter_net = None
        if eif is not None:
            filter_net = self.filter_net
            # Every round, also when the device's state (loaded below) overwrites the
            # weights: this also leaves torch's global generator as building the
            # device's filter does, and skipping that changes results.
            initial = self.initial_filter_state(device_id)
            if not (state and "filter" in state.get("trainer", {})):
                filter_net.load_state_dict(initial)
        trainer = LocalTrainer(
            self.main_net,
            self.train_data,
            self.input_shape,
            scenario.train_config,
            filter_net=filter_net,
            eif=eif,
            emp=emp,
            seed=int(rng.integers(2**62)),
            main_cost=self.main_cost,
            filter_cost=self.filter_cost,
            emp_plans=self.emp_plans,
            quant=tier.quant,
        )
        trainer.set_lr(scenario.train.lr_at_round(server_round, scenario.run.rounds))
        stream = self.stream(device_id, tier, local_data=local_data)
        if state:  # None or {} (a device that dropped out before its first round)
            stream.load_state(state["stream"])
            trainer.load_state_dict(state["trainer"])
        if trainer.filter is not None and eif is not None and eif.lr_final is not None:
            done = (server_round - 1) / max(scenario.run.rounds - 1, 1)
            trainer.filter.set_lr(eif.lr + (eif.lr_final - eif.lr) * done)
        arrivals = stream.next_round()
        rounds, start = scenario.run.rounds, trainer.position

        def run_share(position: int) -> float:
            """Share of the run done: rounds before this one, plus this round's part."""
            within = (position - start) / max(len(arrivals), 1)
            return (server_round - 1 + within) / rounds

        try:
            run = trainer.run(
                torch.from_numpy(arrivals),
                budget_macs=tier.budget_macs,
                progress=run_share,
                flush=True,  # a round trains only what it streamed (trained <= streamed)
            )
        finally:
            trainer.close()
        stream.settle(run.leftover.numpy())
        ledger = run.ledger
        new_state = {"stream": stream.state(), "trainer": trainer.state_dict()}
        spent = ledger.spent_macs
        out = RoundResult(
            weights=transported_weights(self.main_net, self.weight_names),
            ledger=ledger,
            compute_s=profile.compute_seconds(spent),
            energy_j=profile.energy_joules(spent),
            upload_s=profile.upload_seconds(self.model_bytes()),
            download_s=download_s,
            threshold=trainer.filter.threshold if trainer.filter is not None else math.nan,
            dropped=False,
        )
        return out, new_state

    # ----------------------------------------------------------- evaluation
    def evaluate(self, weights: Mapping[str, Tensor]) -> tuple[float, float]:
        """Central evaluation: accuracy and loss of ``weights`` on the test set."""
        if self.test_data is None:
            data = self.scenario.data
            self.test_data = load_dataset(
                data.dataset, "test", self._data_dir, download=data.download
            )
        load_weights(self.main_net, weights)
        n = len(self.test_data)
        if self.scenario.server.eval_instances is not None:
            n = min(n, self.scenario.server.eval_instances)
        return evaluate(self.main_net, self.test_data, n)


def transported_names(model: nn.Module) -> list[str]:
    """State-dict entries exchanged with the server: floating-point params and buffers.

    Integer buffers (BatchNorm's ``num_batches_tracked``) stay local: averaging
    them is meaningless.
    """
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def transported_weights(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Copies of the transported entries of ``model``'s state dict."""
    state = model.state_dict()
    return {name: state[name].detach().clone() for name in names}


def load_weights(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Load transported weights into ``model`` (other entries are left as they are)."""
    state = model.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(torch.as_tensor(value))
