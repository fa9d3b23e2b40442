"""Self-contained report pages: formatted tables as Markdown and HTML, PNGs embedded.

An HTML page written here needs nothing but the file itself: styles are
inline, images are embedded as base64 ``data:`` URIs and there is no script,
so it opens offline and can be mailed or attached as it is.

:func:`render_run` re-renders a single run folder (``fededge run``): its plots
and a ``report.html`` from the saved tables, without running anything.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fededge.files import atomic_write_text
from fededge.reports.tables import untyped

#: How a value is shown: a callable from the raw value to text.
Formatter = Callable[[Any], str]

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.meta { color: #555; margin-top: 0; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right;
     font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; } td:first-child { white-space: nowrap; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 640px; }
ul.findings li { margin-bottom: 0.3em; }
.note { color: #555; font-size: 0.9em; }
"""


# --------------------------------------------------------------------------- formatting
def fmt_percent(value: Any) -> str:
    """0.9705 -> ``97.05%``."""
    return "–" if _missing(value) else f"{100 * float(value):.2f}%"


def fmt_points(value: Any) -> str:
    """0.029 (a difference of fractions) -> ``+2.90 pp``."""
    return "–" if _missing(value) else f"{100 * float(value):+.2f} pp"


def fmt_count(value: Any) -> str:
    """12345.0 -> ``12,345``."""
    return "–" if _missing(value) else f"{round(float(value)):,}"


def fmt_si(value: Any) -> str:
    """1.23e11 -> ``123 G``; ``inf`` -> ``unlimited``."""
    if _missing(value):
        return "–"
    v = float(value)
    if math.isinf(v):
        return "unlimited"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def fmt_number(value: Any) -> str:
    """Three significant digits (``942.9`` -> ``943``; ``0.05`` -> ``0.05``)."""
    if _missing(value):
        return "–"
    v = float(value)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def fmt_level(value: Any) -> str:
    """0.5 -> ``0.5×``."""
    return "–" if _missing(value) else f"{float(value):g}×"


def fmt_text(value: Any) -> str:
    """Anything as text (missing -> ``–``)."""
    return "–" if _missing(value) else str(value)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Column:
    """One displayed column: source column, header and formatter."""

    key: str
    label: str
    fmt: Formatter = fmt_text

    @property
    def numeric(self) -> bool:
        """Right-aligned in tables."""
        return self.fmt is not fmt_text


def display_frame(frame: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """The columns of ``frame`` that ``columns`` name, formatted as text, with their labels."""
    shown = [c for c in columns if c.key in frame.columns]
    return pd.DataFrame(
        {c.label: [c.fmt(v) for v in frame[c.key]] for c in shown}, columns=[c.label for c in shown]
    )


def markdown_table(frame: pd.DataFrame, numeric: Sequence[str] = ()) -> str:
    """A GitHub-flavoured Markdown table of a frame of text; ``numeric`` columns right-aligned."""
    headers = [str(c) for c in frame.columns]
    cells = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    align = ["---:" if h in numeric else "---" for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def formatted_markdown(frame: pd.DataFrame, columns: Sequence[Column]) -> str:
    """:func:`display_frame` as a Markdown table."""
    return markdown_table(display_frame(frame, columns), [c.label for c in columns if c.numeric])


# --------------------------------------------------------------------------- html
def html_table(frame: pd.DataFrame, numeric: Sequence[str] = ()) -> str:
    """An HTML table of a frame of text (escaped); ``numeric`` columns right-aligned."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f'<td class="num">{html.escape(str(v))}</td>'
            if c in numeric
            else f"<td>{html.escape(str(v))}</td>"
            for c, v in zip(frame.columns, row, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    # a table wider than the page scrolls sideways inside its own box instead of clipping
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def formatted_html(frame: pd.DataFrame, columns: Sequence[Column]) -> str:
    """:func:`display_frame` as an HTML table."""
    return html_table(display_frame(frame, columns), [c.label for c in columns if c.numeric])


def html_image(path: Path, caption: str = "") -> str:
    """A figure with the PNG at ``path`` embedded as base64 (empty when the file is missing)."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption or path.stem, quote=True)
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">{cap}</figure>'


def html_list(items: Sequence[str], css_class: str = "") -> str:
    """An unordered list of (escaped) text items."""
    cls = f' class="{css_class}"' if css_class else ""
    return f"<ul{cls}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def html_page(title: str, blocks: Sequence[str], *, meta: str = "") -> str:
    """A complete, self-contained HTML document: ``blocks`` are HTML fragments."""
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
    )
    intro = f"<h1>{html.escape(title)}</h1>" + (
        f'<p class="meta">{html.escape(meta)}</p>' if meta else ""
    )
    return head + intro + "\n".join(blocks) + "</body></html>\n"


def h2(text: str) -> str:
    """A section heading."""
    return f"<h2>{html.escape(text)}</h2>"


def paragraph(text: str, css_class: str = "") -> str:
    """A paragraph of (escaped) text."""
    cls = f' class="{css_class}"' if css_class else ""
    return f"<p{cls}>{html.escape(text)}</p>"


# --------------------------------------------------------------------------- columns
#: How a column shown in more than one table is headed and formatted: once, here.
SHOWN: dict[str, Column] = {
    column.key: column
    for column in (
        Column("aimed_ratio", "R_set aimed", fmt_number),
        Column("budget", "budget", fmt_level),
        Column("budget_exhausted", "budget ran out", fmt_count),
        Column("budget_used", "budget used", fmt_percent),
        Column("computation_saved", "saved", fmt_percent),
        Column("devices", "devices", fmt_count),
        Column("energy_j", "energy (J)", fmt_number),
        Column("replies", "replies", fmt_count),
        Column("savers", "savers"),
        Column("seeds", "seeds", fmt_count),
        Column("spent_macs", "spent MACs", fmt_si),
        Column("streamed", "streamed", fmt_count),
        Column("tier", "tier"),
        Column("trained", "trained", fmt_count),
        Column("unprocessed", "unprocessed", fmt_count),
        Column("variant", "variant"),
    )
}


def shown(*columns: str | Column) -> tuple[Column, ...]:
    """A table's columns: a key takes its :data:`SHOWN` display, a Column is its own."""
    return tuple(SHOWN[c] if isinstance(c, str) else c for c in columns)


# --------------------------------------------------------------------------- one run
RUN_TIER_COLUMNS = shown(
    "tier",
    "devices",
    "replies",
    Column("dropped", "dropped", fmt_count),
    Column("arrived", "arrived", fmt_count),
    "streamed",
    "trained",
    "unprocessed",
    "spent_macs",
    Column("baseline_macs", "baseline MACs", fmt_si),
    "computation_saved",
    "energy_j",
    "budget_exhausted",
    "aimed_ratio",
    "budget_used",
)
RUN_ROUND_COLUMNS = shown(
    Column("round", "round", fmt_count),
    Column("ok", "ok", fmt_count),
    Column("sampled", "sampled", fmt_count),
    "trained",
    "budget_exhausted",
    "spent_macs",
    Column("cum_computation_saved", "saved (cum.)", fmt_percent),
    "aimed_ratio",
    "budget_used",
    Column("accuracy", "accuracy", fmt_percent),
    Column("cum_sim_s", "sim. time (s)", fmt_number),
    Column("cum_energy_j", "energy (J, cum.)", fmt_number),
)


def read_table(folder: Path, stem: str) -> pd.DataFrame:
    """A run folder's ``stem`` table (Parquet, else CSV; empty when neither reads)."""
    for name, reader in ((f"{stem}.parquet", pd.read_parquet), (f"{stem}.csv", pd.read_csv)):
        path = folder / name
        if path.exists():
            try:
                return untyped(pd.DataFrame(reader(path)))
            except (OSError, ValueError):
                continue
    return pd.DataFrame()


def read_rounds(folder: Path) -> pd.DataFrame:
    """A run folder's rounds table (Parquet, else CSV; empty when neither exists)."""
    return read_table(folder, "rounds")


def read_tiers(folder: Path) -> pd.DataFrame:
    """A run folder's per-tier table (empty when missing)."""
    path = folder / "tiers.csv"
    try:
        return pd.read_csv(path) if path.exists() else pd.DataFrame()
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def ratio_by_tier_and_round(folder: Path) -> pd.DataFrame:
    """Mean R_set aimed at (``aimed_ratio``) per tier (rows) and round (columns).

    Of the devices that trained; empty when the run has no per-device table.
    """
    devices = read_table(folder, "devices")
    if not {"tier", "round", "aimed_ratio", "status"} <= set(devices.columns):
        return pd.DataFrame()
    ok = devices[devices["status"] == "ok"]
    table = ok.pivot_table(index="tier", columns="round", values="aimed_ratio", aggfunc="mean")
    table.columns = [f"round {int(c)}" for c in table.columns]
    return table.reset_index()


def html_links(links: Sequence[tuple[str, str]], css_class: str = "") -> str:
    """An unordered list of links ``(text, relative href)``, both escaped."""
    cls = f' class="{css_class}"' if css_class else ""
    items = "".join(
        f'<li><a href="{html.escape(href, quote=True)}">{html.escape(text)}</a></li>'
        for text, href in links
    )
    return f"<ul{cls}>{items}</ul>"


def render_run(folder: str | Path, *, plots: bool = True) -> Path:
    """Write a run folder's ``report.html`` from its saved tables.

    Its plots are re-drawn first, unless ``plots`` is False (the run drew them).

    Raises
    ------
    FileNotFoundError
        When the folder holds no rounds table.
    """
    from fededge.reports.plots import fleet_plots

    out = Path(folder)
    rounds, tiers = read_rounds(out), read_tiers(out)
    if rounds.empty:
        raise FileNotFoundError(f"{out} holds no rounds.parquet or rounds.csv")
    summary: Mapping[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((out / "summary.json").read_text())
    name = str(summary.get("name") or out.name)
    if plots and not tiers.empty:
        fleet_plots(rounds, tiers, out, title=name)
    acc = rounds["accuracy"].dropna() if "accuracy" in rounds else pd.Series(dtype=float)
    last = rounds.iloc[-1]
    facts = [
        f"rounds: {int(last['round'])}",
        f"final accuracy: {fmt_percent(acc.iloc[-1]) if len(acc) else '–'}",
        f"best accuracy: {fmt_percent(acc.max()) if len(acc) else '–'}",
        f"fleet MACs spent: {fmt_si(last.get('cum_spent_macs'))} "
        f"(plain SGD on the same instances: {fmt_si(last.get('cum_baseline_macs'))}; "
        f"saved {fmt_percent(last.get('cum_computation_saved'))})",
        f"simulated time: {fmt_number(last.get('cum_sim_s'))} s; "
        f"energy: {fmt_number(last.get('cum_energy_j'))} J",
    ]
    blocks = [
        html_list(facts),
        h2("Per tier"),
        formatted_html(tiers, RUN_TIER_COLUMNS) if not tiers.empty else "",
        *ratio_blocks(out, tiers),
        h2("Plots"),
        html_image(out / "accuracy.png", "Test accuracy of the global model per round."),
        html_image(
            out / "accuracy_vs_time.png",
            "Test accuracy against the fleet's simulated time and energy (time- and "
            "energy-to-accuracy).",
        ),
        html_image(out / "macs.png", "Cumulative fleet MACs spent vs plain SGD on the same data."),
        html_image(out / "saving_per_tier.png", "Computation saved per tier."),
        h2("Per round"),
        formatted_html(rounds, RUN_ROUND_COLUMNS),
    ]
    page = html_page(f"fededge run: {name}", blocks, meta=str(out))
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


def ratio_blocks(out: Path, tiers: pd.DataFrame) -> list[str]:
    """The run report's "R_set per tier and round" section (none without EIF)."""
    if tiers.empty or "aimed_ratio" not in tiers or (tiers["aimed_ratio"].fillna(1.0) >= 1.0).all():
        return []  # no tier selected instances: nothing to show
    table = ratio_by_tier_and_round(out)
    if table.empty:
        return []
    columns = [Column("tier", "tier")] + [
        Column(c, c.removeprefix("round "), fmt_number) for c in table.columns if c != "tier"
    ]
    return [
        h2("R_set per tier and round"),
        paragraph(
            "Mean share of each streamed mini-batch the devices aimed to train (R_set; 1: "
            'everything trained). With target_ratio = "auto" each device chooses it '
            "from its own budget before the round."
        ),
        formatted_html(table, columns),
    ]
