"""A fleet built from a scenario: datasets, partitions, model costs and devices.

This is the core behind the Flower apps (``clients/`` and ``server/`` only
adapt it): a :class:`FleetRuntime` holds what every device of a scenario shares
(datasets, partitions, per-instance model costs, one main net and one filter
net reused for every device it hosts), so a worker process loads it once; an
:class:`EdgeDevice` is one device's round: profile + budget + stream + local
state, trained with the one training loop (:class:`~fededge.training.LocalTrainer`).
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

from fededge.data import ImageDataset, dataset_info, load_dataset
from fededge.error_map import EMPConfig, KernelPlans
from fededge.flops import ModelCost, model_cost
from fededge.instance_filter import EIFConfig
from fededge.ledger import Ledger
from fededge.models import build_filter, build_model
from fededge.quantize import QuantConfig
from fededge.scenario import SaversSection, Scenario, Tier, data_dir_of
from fededge.streams import DeviceStream, partition
from fededge.training import LocalTrainer, TrainConfig, evaluate


def eif_config(savers: SaversSection, rounds: int) -> EIFConfig | None:
    """The EIF parameters of a saver section (None when EIF is off)."""
    s = savers.eif
    if not s.enabled:
        return None
    return EIFConfig(**s.model_dump(exclude={"enabled"}))


def emp_config(savers: SaversSection) -> EMPConfig | None:
    """The EMP parameters of a saver section (None when EMP is off)."""
    s = savers.emp
    if not s.enabled:
        return None
    return EMPConfig(
        keep_ratio=s.keep_ratio,
        gamma_weight=s.gamma_weight,
        gamma_error=s.gamma_error,
        exempt=tuple(s.exempt),
    )


def quant_config(savers: SaversSection) -> QuantConfig | None:
    """The quantized-training parameters of a saver section (None when it is off)."""
    s = savers.quant
    if not s.enabled:
        return None
    return QuantConfig(**s.model_dump(exclude={"enabled"}))


def train_config(scenario: Scenario) -> TrainConfig:
    """The main net's optimizer settings of a scenario."""
    t = scenario.train
    return TrainConfig(
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
    )


def _costs(scenario: Scenario) -> tuple[ModelCost, ModelCost]:
    info = dataset_info(scenario.data.dataset, data_dir_of(scenario))
    shape = (info.channels, info.image_size, info.image_size)
    main = build_model(
        scenario.main_model,
        num_classes=info.num_classes,
        in_channels=info.channels,
        image_size=info.image_size,
    )
    filt = build_filter(
        scenario.filter_model, in_channels=info.channels, image_size=info.image_size
    )
    return model_cost(main, shape), model_cost(filt, shape)


def minimum_round_macs(scenario: Scenario, tier: Tier) -> int:
    """The least budget that lets a device of ``tier`` train one mini-batch in a round.

    With EIF on, the device must also be able to filter and to train the
    filter on that batch; the bound is the loop's own worst case for one
    streamed mini-batch (:meth:`LocalTrainer._stream_batch`).
    """
    main, filt = _costs(scenario)
    b = scenario.train.batch_size
    needed = b * main.training_macs
    if tier.savers.eif.enabled:
        needed += b * (filt.forward_macs + filt.training_macs)
    return needed


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
        self.main_cost = model_cost(self.main_net, self.input_shape)
        self.filter_cost = model_cost(self.filter_net, self.input_shape)
        self.weight_names = transported_names(self.main_net)
        self._device_tiers: dict[int, Tier] = {}
        self._local_data: set[int] = set()
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
        """Every device's share of the training set (see :func:`fededge.streams.partition`)."""
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
    def configure_device(
        self, device_id: int, *, tier: Tier | None = None, local_data: bool = False
    ) -> None:
        """Let a (real) device train under ``tier`` and/or on all of its training data.

        ``tier`` replaces the tier of ``device_id`` (e.g. the same budget with
        the device's own profile, see :func:`fededge.deployment.device_tier`);
        ``local_data`` streams the whole training set instead of the device's
        partition (a device with its own data).
        """
        if tier is None:
            self._device_tiers.pop(device_id, None)
        else:
            self._device_tiers[device_id] = tier
        if local_data:
            self._local_data.add(device_id)
        else:
            self._local_data.discard(device_id)

    def tier_of(self, device_id: int) -> Tier:
        """The tier device ``device_id`` trains under (see :meth:`configure_device`)."""
        return self._device_tiers.get(device_id) or self.scenario.tier_of(device_id)

    def stream(self, device_id: int) -> DeviceStream:
        """Device ``device_id``'s stream (fresh state)."""
        tier = self.tier_of(device_id)
        data = self.scenario.data
        indices = (
            np.arange(len(self.train_data))
            if device_id in self._local_data
            else self.partitions[device_id]
        )
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
    ) -> tuple[RoundResult, dict[str, Any]]:
        """Run device ``device_id``'s round and return its result and new local state.

        ``state`` is what the previous round returned (None in the first round):
        stream position and backlog, the trainer's queue, the filter's weights,
        optimizer, T_l and R_TH window.
        """
        scenario = self.scenario
        tier = self.tier_of(device_id)
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
        eif = eif_config(tier.savers, scenario.run.rounds)
        emp = emp_config(tier.savers)
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
            train_config(scenario),
            filter_net=filter_net,
            eif=eif,
            emp=emp,
            seed=int(rng.integers(2**62)),
            main_cost=self.main_cost,
            filter_cost=self.filter_cost,
            emp_plans=self.emp_plans,
            quant=quant_config(tier.savers),
        )
        trainer.set_lr(scenario.train.lr_at_round(server_round, scenario.run.rounds))
        stream = self.stream(device_id)
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
