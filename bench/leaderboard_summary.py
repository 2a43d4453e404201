"""The leaderboard's summary page: which embedding helps where.

One section per encoder: a heatmap (featurizer rows x (task, fraction) columns) of the % change of the mean test
MAE against one-hot in the same task, protocol, encoder and fraction (diverging colours centred at 0, negative =
lower MAE = better; * = paired t-test over seeds p < ALPHA), the same numbers as a markdown table, and a reading
generated from them that states counts and extremes only. Built from ``bench.leaderboard.sections``, so the
numbers are the task pages' numbers; deterministic like them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.leaderboard import (
    ALPHA,
    BASELINE,
    HEADER,
    SUMMARY,
    CellStats,
    Section,
    encoder_labels,
    featurizer_labels,
    fmt,
    p_text,
    pct,
)


@dataclass(frozen=True)
class Column:
    task: str
    protocol: int  # the task page's protocol number
    fraction: float
    show_protocol: bool  # the task has several protocols under this encoder
    unit: str
    baseline: CellStats | None

    @property
    def label(self) -> str:
        return f"{self.task}{self.protocol_suffix}, {self.fraction:g}"

    @property
    def where(self) -> str:
        return f"{self.task}{self.protocol_suffix} at fraction {self.fraction:g}"

    @property
    def protocol_suffix(self) -> str:
        return f" (protocol {self.protocol})" if self.show_protocol else ""


@dataclass
class Grid:
    """One encoder's changes against one-hot: rows are featurizer labels (one-hot itself excluded)."""

    encoder: str
    rows: list[str]
    columns: list[Column]
    cells: dict[tuple[str, int], CellStats]  # (row, column index)
    left_out: list[str]  # why some (task, fraction) columns are not shown


def grids(secs: list[Section]) -> list[Grid]:
    enc_keys = sorted({t.encoder for s in secs for t in s.tables})
    elabels = encoder_labels(enc_keys)
    out = []
    for enc in sorted(enc_keys, key=lambda k: elabels[k]):
        mine = [(s, t) for s in secs for t in s.tables if t.encoder == enc]
        # labels over every task, so one featurizer is one row across the whole grid
        flabels = featurizer_labels(k for _, t in mine for k in t.featurizers)
        n_protocols: dict[str, int] = {}
        for s, _ in mine:
            n_protocols[s.task] = n_protocols.get(s.task, 0) + 1
        columns: list[Column] = []
        cells: dict[tuple[str, int], CellStats] = {}
        no_base, alone = [], []
        for s, t in mine:
            for f in t.fractions:
                base = t.stats.get((t.baseline, f)) if t.baseline is not None else None
                col = Column(s.task, s.index, f, n_protocols[s.task] > 1, s.unit, base)
                others = [k for k in t.featurizers if k != t.baseline and (k, f) in t.stats]
                if base is None:
                    no_base.append(col.where)
                elif not others:  # nothing to compare: an all-blank column would only dilute the heatmap
                    alone.append(col.where)
                else:
                    columns.append(col)
                    cells.update({(flabels[k], len(columns) - 1): t.stats[(k, f)] for k in others})
        notes = ([f"without a single {BASELINE} baseline: {'; '.join(no_base)}"] if no_base else []) + \
                ([f"only {BASELINE} was run: {'; '.join(alone)}"] if alone else [])
        rows = sorted({r for r, _ in cells})
        out.append(Grid(elabels[enc], rows, columns, cells, notes))
    return out


def _better(st: CellStats) -> bool:
    return st.significant and st.change is not None and st.change < 0


def _worse(st: CellStats) -> bool:
    return st.significant and st.change is not None and st.change > 0


def _mark(st: CellStats) -> str:
    return pct(st.change) + ("*" if st.significant else "")


def _table(g: Grid, decimals: dict[str, int]) -> str:
    from tabulate import tabulate

    headers = ["featurizer"] + [c.label for c in g.columns]
    body = [[f"{BASELINE}: test MAE"] + [f"{fmt(c.baseline.mean, decimals[c.task])} {c.unit}" for c in g.columns]]
    for r in g.rows:
        body.append([r] + [_mark(g.cells[(r, j)]) if (r, j) in g.cells else "" for j in range(len(g.columns))])
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _listing(items: list[tuple[str, CellStats]]) -> str:
    return ", ".join(f"{name} ({pct(st.change)}, {p_text(st.p)})" for name, st in items)


def reading(g: Grid) -> list[str]:
    """What the numbers show, and nothing else: the counts of significant changes, one line per (task, fraction)
    column naming the significant featurizers, and one table row per featurizer (its counts and largest gain)."""
    from tabulate import tabulate

    filled = list(g.cells.values())
    better = [st for st in filled if _better(st)]
    worse = [st for st in filled if _worse(st)]
    untested = [st for st in filled if st.p is None]
    lines = [f"- {len(filled)} (featurizer, task, fraction) cells over {len(g.columns)} (task, fraction) "
             f"columns: {len(better)} significantly better than {BASELINE} (lower mean test MAE, p < {ALPHA}), "
             f"{len(worse)} significantly worse, {len(filled) - len(better) - len(worse)} without a significant "
             f"difference" + (f" ({len(untested)} of them without a paired test: fewer than 2 seeds paired with "
                              f"{BASELINE}'s, or identical differences)" if untested else "") + "."]
    tested = len(filled) - len(untested)
    if tested:
        # uncorrected tests, one per cell: say how many false positives chance alone gives
        lines.append(f"- The tests are not corrected for multiplicity: with {tested} tests at p < {ALPHA}, about "
                     f"{ALPHA * tested:.1f} would come out significant by chance if no featurizer differed from "
                     f"{BASELINE}.")
    for j, c in enumerate(g.columns):
        # most negative change first, so each listing starts with its largest effect
        here = sorted(((st.change or 0.0, r), r, st) for r in g.rows if (st := g.cells.get((r, j))) is not None)
        b = [(r, st) for _, r, st in here if _better(st)]
        w = [(r, st) for _, r, st in reversed(here) if _worse(st)]
        text = f"- {c.where}: "
        text += (f"significantly better than {BASELINE}: {_listing(b)}" if b
                 else f"no featurizer is significantly better than {BASELINE}")
        if w:
            text += f"; significantly worse: {_listing(w)}"
        lines.append(text + ".")
    body = []
    for r in g.rows:
        mine = [(g.columns[j], st) for (row, j), st in sorted(g.cells.items()) if row == r]
        gains = sorted(((st.change, c.task, c.protocol, c.fraction), c, st) for c, st in mine
                       if st.change is not None and st.change < 0)
        if gains:
            _, c, st = gains[0]
            gain = f"{pct(st.change)} ({c.label}; {p_text(st.p)})"
        else:
            gain = f"none (mean never below {BASELINE}'s)"
        body.append([r, f"{sum(_better(st) for _, st in mine)} of {len(mine)}", str(sum(_worse(st) for _, st in mine)),
                     str(sum(st.p is None for _, st in mine)), gain])
    table = tabulate(body, headers=["featurizer", "significantly better", "significantly worse", "no paired test",
                                    "largest gain (cell; p)"], tablefmt="github", disable_numparse=True)
    return lines + ["", table]


def summary_page(secs: list[Section], decimals: dict[str, int]) -> str:
    lines = [HEADER, "# Summary: which embedding helps where\n",
             f"For each encoder, the change of the mean test MAE against {BASELINE} in the same task, protocol "
             f"and label fraction, in % (negative = lower MAE = better); * = paired t-test over seeds "
             f"p < {ALPHA} (pairs matched by seed); blank = not run. The first row gives {BASELINE}'s mean test "
             f"MAE. Means, stds and tests per cell are on the task pages (see [the index](README.md)).\n"]
    gs = grids(secs)
    if not gs:
        lines.append("(no completed runs)\n")
    for i, g in enumerate(gs):
        lines.append(f"## Encoder {g.encoder}\n")
        if not g.columns:
            lines.append(f"(no (task, fraction) column has a {BASELINE} baseline and another featurizer)\n")
        else:
            lines.append(f"![% change of the mean test MAE against {BASELINE}]({SUMMARY}_{i + 1}.png)\n")
            lines.append(_table(g, decimals) + "\n")
            lines.append("### Reading\n")
            lines.append("\n".join(reading(g)) + "\n")
        if g.left_out:
            lines.append(f"Left out, {'; '.join(g.left_out)}.\n")
    return "\n".join(lines)


def summary_heatmaps(secs: list[Section]) -> dict[str, Any]:
    """{``SUMMARY_<n>.png``: figure}: one heatmap per encoder section of the summary page (same numbering)."""
    import numpy as np

    from bench.leaderboard import _pyplot

    plt = _pyplot()
    import matplotlib  # after _pyplot, which selects the Agg backend

    figs = {}
    for i, g in enumerate(grids(secs)):
        if not g.columns or not g.rows:
            continue
        vals = np.full((len(g.rows), len(g.columns)), np.nan)
        for (r, j), st in g.cells.items():
            if st.change is not None:
                vals[g.rows.index(r), j] = st.change
        finite = np.abs(vals[np.isfinite(vals)])
        vmax = max(1.0, float(finite.max())) if finite.size else 1.0  # symmetric, so 0 is the centre colour
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e0e0e0")
        w = 2.8 + 1.05 * len(g.columns)
        h = 1.8 + 0.38 * len(g.rows)
        fig, ax = plt.subplots(figsize=(w, h), dpi=100)
        im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
        for (r, j), st in sorted(g.cells.items()):
            if st.change is None:
                continue
            v = st.change
            ax.text(j, g.rows.index(r), f"{v:+.1f}{'*' if st.significant else ''}", ha="center", va="center",
                    fontsize=7, color="white" if abs(v) > 0.6 * vmax else "black")
        ax.set_xticks(range(len(g.columns)), [f"{c.task}{c.protocol_suffix}\n{c.fraction:g}" for c in g.columns],
                      rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(g.rows)), g.rows, fontsize=8)
        ax.set_title(f"{g.encoder}: % change of mean test MAE vs {BASELINE} (* p < {ALPHA})", fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("% change (negative = better)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        fig.tight_layout()
        figs[f"{SUMMARY}_{i + 1}.png"] = fig
    return figs
