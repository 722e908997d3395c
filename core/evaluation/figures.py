"""Plotly figures of an evaluation: AUROC per pattern and method, retention curves, reliability diagram.

Each figure is written as interactive HTML and, when a Chromium is available to Kaleido, as PNG.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio

from core.evaluation.harness import pattern_label
from core.evaluation.report import pattern_columns, retention, summary
from core.names import display_name

log = logging.getLogger(__name__)


# enough distinct colours for every method of the evaluation (plotly's default cycle has 10, so with 16
# methods six lines shared a colour)
COLOURS = px.colors.qualitative.Dark24
LEGEND_ROW = 22  # px per legend entry
# the methods of the reliability diagram (all 16 would be a tangle)
RELIABILITY_METHODS = ["robustmdiff", "no_diffusion", "early_zero", "dropout_0.5", "masked_attention", "late_fusion"]


def auroc_by_pattern(rows: list[dict], names: list[str]) -> go.Figure:
    s = summary(rows)
    cols = pattern_columns(names)
    s = s[(s.group == "all") & s.condition.isin(cols)].copy()
    pivot = s.pivot(index="method", columns="condition", values="auroc")[cols]
    pivot = pivot.loc[s.method.unique()]
    pivot.index = [display_name(m) for m in pivot.index]
    pivot.columns = [pattern_label(c) for c in cols]
    fig = px.imshow(100 * pivot, text_auto=".1f", color_continuous_scale="Viridis", aspect="auto",
                    labels={"color": "AUROC %", "x": "modalities given", "y": ""})
    height = 140 + 28 * len(pivot)
    fig.update_layout(title="How well each method tells the diagnoses apart (AUROC %) with each combination of "
                            "modalities<br><sup>test split, mean over seeds; 50 = guessing, 100 = perfect</sup>",
                      height=height, margin=dict(l=10, r=10, t=70, b=10))
    fig.update_coloraxes(colorbar=colour_bar(100 * pivot.to_numpy(dtype=float), height - 130))  # less title, axis
    return fig


def colour_bar(values: np.ndarray, plot_height: float, row: float = 20.0) -> dict:
    """Colour-bar ticks that never overlap: plotly picks about as many ticks as the scale has round steps, so
    on a short figure (a quick evaluation's 4 methods: a 250 px plot) their labels ran into each other. At
    most one tick per `row` px, on round values within the data's range."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    most = max(2, min(8, int(plot_height // row)))
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 25, 50) if (hi - lo) / s < most)
    first = np.ceil(lo / step) * step
    ticks = [float(t) for t in np.arange(first, hi + 1e-9, step)]
    if len(ticks) < 2:  # a narrow range: its two ends
        ticks = sorted({round(lo, 1), round(hi, 1)})
    return dict(title=dict(text="AUROC %", side="right"), tickvals=ticks, ticktext=[f"{t:g}" for t in ticks],
                thickness=14, len=1.0)


def retention_curve(rows: list[dict], names: list[str]) -> go.Figure:
    """One line per method, every one in the legend: the figure is as tall as its legend needs (a legend
    taller than the plot is cut off: at the default height two of 16 methods were missing)."""
    ret = retention(rows, names)
    fig = go.Figure()
    ks = [0] + [k for k in range(1, len(names)) if f"{k}_missing_mean" in ret]
    for i, (_, r) in enumerate(ret.iterrows()):
        y = [1.0] + [r[f"{k}_missing_mean"] for k in ks[1:]]
        reference = r["method"] == "robustmdiff"
        fig.add_trace(go.Scatter(x=ks, y=y, mode="lines+markers", name=display_name(r["method"]), showlegend=True,
                                 line=dict(width=4 if reference else 1.5, color=COLOURS[i % len(COLOURS)],
                                           dash="solid" if reference or i < len(COLOURS) else "dash")))
    fig.update_layout(title="AUROC kept as modalities go missing (share of the all-given AUROC)",
                      xaxis_title="modalities missing (mean over which ones)", yaxis_title="share of full AUROC",
                      yaxis_tickformat=".0%", xaxis=dict(tickvals=ks),
                      legend=dict(orientation="v", yanchor="top", y=1, tracegroupgap=0),
                      height=max(450, 140 + LEGEND_ROW * len(ret)), margin=dict(l=10, r=10, t=60, b=10))
    return fig


def reliability_diagram(reliability: dict[str, dict], bins: int = 10, methods: list[str] | None = None) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="gray"),
                               name="perfect calibration"))
    edges = np.linspace(0, 1, bins + 1)
    for method, d in reliability.items():
        if methods and method not in methods or not d:
            continue
        probs, y = np.asarray(d["probs"]), np.asarray(d["y"])
        conf, correct = probs.max(1), probs.argmax(1) == y
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (conf > lo) & (conf <= hi)
            if sel.sum() >= 5:
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=display_name(method)))
    fig.update_layout(title="Does the stated confidence match how often it is right?<br><sup>test split, "
                            "modalities missing as they come</sup>", xaxis_title="confidence in the top diagnosis",
                      yaxis_title="share right", xaxis_range=[0, 1], yaxis_range=[0, 1],
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0),
                      height=560, margin=dict(l=10, r=10, t=70, b=10))
    return fig


def write_figures(figs: dict[str, go.Figure], out: Path,
                  on_figure: Callable[[float, str], None] | None = None) -> list[Path]:
    """HTML always; PNG through Kaleido when it can find a Chromium (skipped with a warning otherwise) and
    RMD_FIGURE_PNG is not 0 (the Robustness lab's quick evaluation draws its figures on the page: no headless
    browser beside the server). `on_figure(fraction, text)` hears before each figure (a PNG takes a few
    seconds)."""
    written = []
    png = os.environ.get("RMD_FIGURE_PNG", "1") != "0"
    for noisy in ("kaleido", "choreographer", "logistro"):  # the headless browser's start-up chatter
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for i, (name, fig) in enumerate(figs.items()):
        if on_figure:
            on_figure(i / len(figs), f"drawing the figures: {name.replace('_', ' ')} ({i + 1} of {len(figs)})")
        fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
        written.append(out / f"{name}.html")
        if not png:
            continue
        try:
            pio.write_image(fig, out / f"{name}.png", width=1200, height=max(500, int(fig.layout.height or 500)), scale=1)
            written.append(out / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - Kaleido raises several types when no browser is found
            log.warning("PNG export of %s skipped (%s); the HTML figure is written", name, type(e).__name__)
    return written

