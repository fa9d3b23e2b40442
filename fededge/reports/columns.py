"""The data dictionary: what every column of fededge's result tables means.

One entry per column name, with its unit, under the conventions of
:data:`CONVENTIONS`.

``fededge report --columns`` prints it, every run folder carries it as
``columns.json`` and ``docs/columns.md`` is generated from it
(``python -m fededge.reports.columns > docs/columns.md``).
"""

from __future__ import annotations

import json
import sys

#: How to read every table (the head of ``docs/columns.md``).
CONVENTIONS = """\
One entry per column name, with its unit; a name means the same in every table
it appears in, summed over the table's scope: a device and round
(`devices`), the fleet in one round (`rounds`), a tier over the whole run
(`tiers`), a whole run (`variants`, sweeps). Conventions:

* counts of instances, steps, replies, rounds and MACs are stored as integers
  (`16294`, nullable where a cell is empty); the few that can be fractional stay
  floats: `aimed_trained` (an expected count), `budget_macs` and `requested_macs`
  (budgets times a multiplier), `precision_saved_macs` and every `*_32eq` (low-bit
  MACs weighted by a·b/32²), and means over seeds (`settings`, sweep `*_sd`);
* shares and ratios are fractions in [0, 1] (`computation_saved` = 0.75
  means 75%), their names say so (`*_saved`, `*_ratio`, `*_share`,
  `budget_used`, `accuracy`, `filter_precision`);
* MACs are multiply-accumulates (`fededge/cost/flops.py`), seconds are simulated
  (the device profile's) unless the name has `wall`;
* an empty cell (NaN) means "does not apply or was not measured" (no budget, no
  filter, a foreign device's unaccounted ledger, a target never reached); an
  unlimited budget is `inf` in `budget_macs` only.
"""

#: The tables the dictionary covers (for docs/columns.md).
TABLES = {
    "devices": "devices.csv / .parquet (one row per device and round)",
    "rounds": "rounds.csv / .parquet (one row per round, fleet totals)",
    "tiers": "tiers.csv / .parquet (one row per tier, the whole run)",
    "variants": "variants.csv (one row per sweep variant, the whole run)",
    "tiers (sweep)": "tiers.csv of a sweep (one row per variant and tier)",
    "head_to_head": "head_to_head.csv (each saver setting against plain SGD at a budget level)",
    "settings": "settings.csv (each budget level x saver setting over seeds)",
}

#: name -> (unit, meaning).
COLUMNS: dict[str, tuple[str, str]] = {
    # identity
    "round": ("count", "server round, from 1"),
    "device": ("id", "device slot in the fleet (0 .. devices - 1; foreign devices above)"),
    "tier": ("name", "the device's tier ([[fleet.tiers]] name)"),
    "profile": ("name", "the tier's device profile (compute speed, energy, link)"),
    "status": (
        "text",
        "ok (reply aggregated), dropped (unavailable), failed (no usable reply), rejected "
        "(reply failed a check: see reason); in variants: finished, partial or missing",
    ),
    "kind": ("text", "simulated, real (a deployed device) or foreign (no fededge ledger)"),
    "reason": ("text", "why a reply failed or was rejected (empty when ok)"),
    "devices": ("count", "devices in the tier"),
    "variant": ("name", "sweep variant: budget level, saver setting (and seed): x1-eif+emp-s0"),
    "budget": ("multiplier", "budget level: every tier's per-round budget times this"),
    "savers": ("text", "saver setting: none, eif, emp, eif+emp, eif:auto, eif+emp:auto"),
    "seed": ("integer", "run.seed of the variant"),
    "seeds": ("count", "seeds the row's figures are the mean of"),
    # replies
    "sampled": ("count", "devices the server asked to train this round"),
    "ok": ("count", "replies aggregated"),
    "replies": ("count", "replies aggregated, summed over rounds"),
    "dropped": ("count", "devices unavailable (tier dropout)"),
    "failed": ("count", "devices whose round failed (error, timeout)"),
    "rejected": ("count", "replies rejected by the server's checks"),
    "failed_replies": ("count", "failed plus rejected replies over the run"),
    "skipped": ("0/1", "1 when the round had fewer good replies than server.min_replies"),
    "skipped_rounds": ("count", "rounds skipped for too few replies"),
    "rolled_back": ("0/1", "1 when the round's model was non-finite and the last good one kept"),
    "foreign": ("count", "replies aggregated from foreign devices (no fededge ledger)"),
    "num_examples": ("count", "the reply's num-examples (its FedAvg weight): instances trained"),
    "rounds": ("count", "rounds the variant finished"),
    # instances
    "arrived": ("instances", "delivered to the device by its stream"),
    "streamed": ("instances", "looked at by the training loop (filter or main net)"),
    "filtered_out": ("instances", "dropped by the early instance filter (no backward)"),
    "uncertainty_sampled": (
        "instances",
        "dropped instances run forward-only through the main net to label them for the filter",
    ),
    "trained": ("instances", "through the main net's forward and backward"),
    "unprocessed": ("instances", "arrivals left untouched because the budget ran out"),
    "steps": ("count", "main-net optimizer steps"),
    "filter_steps": ("count", "filter-net optimizer steps"),
    "selected": ("instances", "trained because the filter kept them (outside full phases)"),
    "selected_high": ("instances", "selected instances whose loss was >= T_l"),
    "selected_loss_sum": ("loss", "summed main-net loss of the selected instances"),
    "explored": ("instances", "dropped instances explored at random (forward-only)"),
    "explored_high": ("instances", "explored instances whose loss was >= T_l"),
    "explored_loss_sum": ("loss", "summed main-net loss of the explored instances"),
    "full_trained": ("instances", "trained in a full-training phase or round (no filtering)"),
    "aimed_trained": (
        "instances",
        "what the kept share aimed to train: R_set x instances streamed through the filter, "
        "plus every instance of full phases and of plain SGD (fractional)",
    ),
    "loss_sum": ("loss", "summed main-net training loss of the trained instances"),
    # MACs
    "filter_forward_macs": ("MACs", "filter inference on every streamed instance"),
    "filter_train_macs": ("MACs", "filter training (forward and backward)"),
    "sampled_forward_macs": ("MACs", "forward-only main-net passes of sampled instances"),
    "main_forward_macs": ("MACs", "main-net forward of trained instances"),
    "main_grad_input_macs": ("MACs", "main-net backward, input-gradient products (EMP prunes)"),
    "main_grad_weight_macs": ("MACs", "main-net backward, weight-gradient products (EMP prunes)"),
    "selection_macs": ("MACs", "EMP's channel scoring and selection"),
    "spent_macs": ("MACs", "everything spent: the seven kinds above, savers' overheads included"),
    "baseline_macs": (
        "MACs",
        "plain SGD (dense forward and backward) on the same streamed instances; for a device "
        "that trained nothing, its spent MACs (it claims no saving)",
    ),
    "saved_macs": ("MACs", "baseline_macs - spent_macs"),
    "requested_macs": ("MACs", "sum of the finite budgets of the round's ok devices"),
    "budget_macs": ("MACs", "the device's (tier's) budget per round; inf when unlimited"),
    "cum_spent_macs": ("MACs", "spent_macs summed over rounds so far"),
    "cum_baseline_macs": ("MACs", "baseline_macs summed over rounds so far"),
    "lowbit_forward_macs": ("MACs", "forward MACs done with quantized operands (subset of spent)"),
    "lowbit_grad_input_macs": ("MACs", "input-gradient MACs with quantized operands"),
    "lowbit_grad_weight_macs": ("MACs", "weight-gradient MACs with quantized operands"),
    "precision_saved_macs": ("MACs", "32-bit-equivalent MACs saved by low-bit operands"),
    "spent_macs_32eq": ("MACs", "spent_macs - precision_saved_macs (32-bit equivalent)"),
    "cum_spent_macs_32eq": ("MACs", "spent_macs_32eq summed over rounds so far"),
    # shares
    "computation_saved": ("fraction", "1 - spent_macs / baseline_macs (the paper's saving)"),
    "cum_computation_saved": ("fraction", "computation_saved of the run so far"),
    "computation_saved_32eq": ("fraction", "1 - spent_macs_32eq / baseline_macs"),
    "cum_computation_saved_32eq": ("fraction", "computation_saved_32eq of the run so far"),
    "aimed_ratio": (
        "fraction",
        "aimed_trained / streamed: the R_set chosen (target_ratio = 'auto') or set; 1 when "
        "everything was trained",
    ),
    "budget_used": ("fraction", "spent_macs / budget (NaN without a budget)"),
    "budget_exhausted": ("count", "device-rounds whose budget ran out (0/1 per device-round)"),
    "budget_exhausted_share": ("fraction", "budget_exhausted / replies"),
    "kept_mean_loss": ("loss", "mean main-net loss of the instances the filter kept"),
    "dropped_mean_loss": ("loss", "mean loss of dropped instances, from the exploration sample"),
    "filter_precision": ("fraction", "kept instances that were high-loss (loss >= T_l)"),
    "filter_recall": ("fraction", "high-loss instances the filter kept (drops estimated)"),
    "threshold": ("loss", "T_l, the filter's adaptive loss threshold, after the round"),
    # accuracy
    "accuracy": ("fraction", "test accuracy of the global model after the round"),
    "loss": ("loss", "test loss of the global model after the round"),
    "final_accuracy": ("fraction", "accuracy after the last evaluated round"),
    "best_accuracy": ("fraction", "highest accuracy of any round"),
    "target_accuracy": ("fraction", "the sweep's target accuracy (NaN: none)"),
    "rounds_to_target": ("count", "first round at the target accuracy (NaN: never)"),
    "target_reached": ("count", "seeds that reached the target accuracy"),
    # time and energy
    "compute_s": ("simulated s", "the device profile's compute time for the MACs spent"),
    "upload_s": ("simulated s", "upload of the reply's weights at the profile's link speed"),
    "download_s": ("simulated s", "download of the global weights"),
    "round_time_s": ("simulated s", "download + compute + upload of the device's round"),
    "sim_round_s": ("simulated s", "the round's slowest ok device (round_time_s maximum)"),
    "cum_sim_s": ("simulated s", "sim_round_s summed over rounds so far"),
    "sim_time_s": ("simulated s", "simulated time of the whole run"),
    "time_to_target_s": ("simulated s", "cum_sim_s when the target was first reached (NaN: never)"),
    "energy_j": ("J", "the device profile's energy for the MACs spent"),
    "cum_energy_j": ("J", "energy_j summed over rounds so far"),
    "wall_s": (
        "wall s",
        "measured wall-clock seconds: of the device's training loop (devices), of the "
        "server round (rounds), of all rounds (variants)",
    ),
    "client_wall_s": ("wall s", "measured wall-clock seconds of the device's whole ClientApp call"),
    "train_wall_s": ("wall s", "devices' training-loop wall seconds summed over the round"),
    # head to head
    "complete": ("bool", "both variants of the pair finished every round"),
    "caution": ("text", "failures or skipped rounds that distort the pair"),
    "beyond_spread": (
        "bool",
        "|mean difference| > sd of the per-seed differences (empty with one seed)",
    ),
    "delta_final_accuracy": ("fraction", "savers' final accuracy - plain SGD's (mean over seeds)"),
    "delta_final_accuracy_sd": ("fraction", "sd of the per-seed final-accuracy differences"),
    "delta_best_accuracy": ("fraction", "savers' best accuracy - plain SGD's"),
    "limited": ("bool", "the tier has a budget"),
}

#: Column-name prefixes and suffixes that derive from a documented name.
PREFIXES = {
    "sgd_": "plain SGD's ",
    "savers_": "the saver setting's ",
}
SUFFIXES = {
    "_limited": " (summed over the budget-limited tiers)",
    "_sd": " (standard deviation over seeds, ddof 1)",
}
#: head_to_head names whose base differs from the documented one.
ALIASES = {"exhausted_share": "budget_exhausted_share", "saved": "computation_saved"}


#: Units whose columns hold whole numbers (stored as integers, see :func:`whole_number`).
WHOLE_UNITS = frozenset({"count", "id", "integer", "0/1", "instances", "MACs"})
#: Columns of those units that can hold fractions (see :data:`CONVENTIONS`).
FRACTIONAL = frozenset({"aimed_trained", "budget_macs", "requested_macs", "precision_saved_macs"})


def whole_number(name: str) -> bool:
    """Whether column ``name`` holds whole numbers (a count), by its documented unit."""
    if name in FRACTIONAL or name.endswith(("_32eq", "_sd")):
        return False
    described = describe(name)
    return described is not None and described[0] in WHOLE_UNITS


def describe(name: str) -> tuple[str, str] | None:
    """``(unit, meaning)`` of a column name, None when it is not documented."""
    if name in COLUMNS:
        return COLUMNS[name]
    for suffix, note in SUFFIXES.items():
        if name.endswith(suffix):
            base = describe(name.removesuffix(suffix))
            return (base[0], base[1] + note) if base else None
    for prefix, note in PREFIXES.items():
        if name.startswith(prefix):
            rest = name.removeprefix(prefix)
            base = describe(ALIASES.get(rest, rest))
            return (base[0], note + base[1]) if base else None
    return None


def as_json() -> str:
    """The dictionary as ``columns.json`` holds it."""
    data = {name: {"unit": unit, "meaning": meaning} for name, (unit, meaning) in COLUMNS.items()}
    return json.dumps({"columns": data, "prefixes": PREFIXES, "suffixes": SUFFIXES}, indent=1)


def as_markdown() -> str:
    """``docs/columns.md``."""
    lines = [
        "# Result columns",
        "",
        "Generated by `python -m fededge.reports.columns > docs/columns.md` from "
        "`fededge/reports/columns.py`;",
        "`fededge report --columns` prints the same; every run folder has it as `columns.json`.",
        "",
        CONVENTIONS.strip(),
        "",
        "Tables: " + "; ".join(f"`{k}`: {v}" for k, v in TABLES.items()) + ".",
        "",
        "Derived names: "
        + "; ".join(f"`{p}NAME`: {n.strip()} NAME" for p, n in PREFIXES.items())
        + "; "
        + "; ".join(f"`NAME{s}`: NAME{n}" for s, n in SUFFIXES.items())
        + ".",
        "",
        "| column | unit | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {unit} | {meaning} |" for name, (unit, meaning) in COLUMNS.items()]
    return "\n".join(lines) + "\n"


def as_text() -> str:
    """What ``fededge report --columns`` prints."""
    width = max(len(n) for n in COLUMNS)
    rows = [f"{name:<{width}}  {unit:<12} {meaning}" for name, (unit, meaning) in COLUMNS.items()]
    notes = [f"{p}NAME: {n.strip()} NAME" for p, n in PREFIXES.items()]
    notes += [f"NAME{s}: NAME{n}" for s, n in SUFFIXES.items()]
    return "\n".join([*rows, "", *notes])


if __name__ == "__main__":  # python -m fededge.reports.columns > docs/columns.md
    sys.stdout.write(as_markdown())
