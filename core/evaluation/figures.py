"""Plotly figures of an evaluation: AUROC per pattern and method, retention curves, reliability diagram.

Each figure is written as interactive HTML and, when a Chromium is available to Kaleido, as PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio

from core.evaluation.report import pattern_columns, retention, summary

log = logging.getLogger(__name__)


def auroc_by_pattern(rows: list[dict], names: list[str], labels: dict[str, str]) -> go.Figure:
    s = summary(rows)
    s = s[(s.group == "all") & s.condition.isin(pattern_columns(names))].copy()
    s["method"] = s.method.map(lambda m: labels.get(m, m))
    pivot = s.pivot(index="method", columns="condition", values="auroc")[pattern_columns(names)]
    pivot = pivot.loc[s.method.unique()]
    fig = px.imshow(pivot, text_auto=".3f", color_continuous_scale="Viridis", aspect="auto",
                    labels={"color": "AUROC", "x": "available modalities", "y": ""})
    fig.update_layout(title="Macro AUROC under every availability pattern (test split, mean over seeds)",
                      height=120 + 28 * len(pivot), margin=dict(l=10, r=10, t=60, b=10))
    return fig


def retention_curve(rows: list[dict], names: list[str], labels: dict[str, str]) -> go.Figure:
    ret = retention(rows, names)
    fig = go.Figure()
    ks = [0] + [k for k in range(1, len(names)) if f"{k}_missing_mean" in ret]
    for _, r in ret.iterrows():
        y = [1.0] + [r[f"{k}_missing_mean"] for k in ks[1:]]
        fig.add_trace(go.Scatter(x=ks, y=y, mode="lines+markers", name=labels.get(r["method"], r["method"]),
                                 line=dict(width=4 if r["method"] == "robustmdiff" else 1.5)))
    fig.update_layout(title="AUROC retained relative to all modalities present", xaxis_title="missing modalities",
                      yaxis_title="share of full AUROC", yaxis_tickformat=".0%", xaxis=dict(tickvals=ks))
    return fig


def reliability_diagram(reliability: dict[str, dict], labels: dict[str, str], bins: int = 10,
                        methods: list[str] | None = None) -> go.Figure:
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
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=labels.get(method, method)))
    fig.update_layout(title="Reliability (test split, natural missingness)", xaxis_title="confidence (top class)",
                      yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1])
    return fig


def write_figures(figs: dict[str, go.Figure], out: Path) -> list[Path]:
    """HTML always; PNG through Kaleido when it can find a Chromium (skipped with a warning otherwise)."""
    written = []
    for noisy in ("kaleido", "choreographer", "logistro"):  # the headless browser's start-up chatter
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for name, fig in figs.items():
        fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
        written.append(out / f"{name}.html")
        try:
            pio.write_image(fig, out / f"{name}.png", width=1200, height=max(500, int(fig.layout.height or 500)), scale=1)
            written.append(out / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - Kaleido raises several types when no browser is found
            log.warning("PNG export of %s skipped (%s); the HTML figure is written", name, type(e).__name__)
    return written

