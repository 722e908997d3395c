"""Every missing-data regime in one run (`python -m core evaluate --regimes all`): one evaluation per regime
(core/evaluation/regimes.py), then one table and one figure of RobustMDiff's difference to each method
with its bootstrap interval, regime by regime (issue 17: where the diffusion helps). The interval is the
hierarchical bootstrap's (training seeds and test cases resampled, core/evaluation/hierarchical.py) where the
study trained several seeds per method, and covers test cases only with one seed (`seeds_resampled`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from core.evaluation import verdicts
from core.evaluation.evaluate import evaluate, stage
from core.evaluation.run_info import code_commit
from core.evaluation.figures import COLOURS, write_figures
from core.evaluation.regimes import REGIME_METHODS, REGIMES
from core.jsonout import dumps
from core.names import display_name
from core.paths import ROOT

# the comparison each regime is read by: the average over availability patterns, except where the regime
# is the test-time missingness itself
HEADLINE = {"mnar": "mnar_50"}
# MNAR changes only the test: its evaluation is the natural one, read on its MNAR conditions
TRAINED_AS = {"mnar": "natural"}


def parse_regimes(spec: str) -> list[str]:
    names = list(REGIMES) if spec in ("", "all") else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in REGIMES]
    if unknown:
        raise ValueError(f"unknown regimes {unknown}; choose from {', '.join(REGIMES)}")
    return names


def study(regimes: str = "all", quick: bool = False, seeds: int | None = None, out: str | Path | None = None,
          methods: str = REGIME_METHODS, device: str | None = None, jobs: int = 1, progress: bool = True,
          on_progress: Callable[[float, str], None] | None = None, short: bool = False,
          config_path: str | Path | None = None) -> dict:
    """`quick`: 600-case cohorts and the short schedule (minutes per regime); `short`: the short schedule on
    the full cohorts; neither: the full schedule (hours per regime on a CPU)."""
    t0 = time.perf_counter()
    names = parse_regimes(regimes)
    out = Path(out) if out else ROOT / "runs" / f"regimes-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    news = on_progress or (lambda f, text: None)
    runs = list(dict.fromkeys(TRAINED_AS.get(n, n) for n in names))
    results: dict[str, dict] = {}
    for i, name in enumerate(runs):
        part = stage(news, i / len(runs), (i + 1) / len(runs))
        results[name] = evaluate(data=None, methods=methods, seeds=seeds, out=out / name, quick=quick, device=device,
                                 progress=progress, jobs=jobs, regime_name=name, short=short, config_path=config_path,
                                 on_progress=lambda f, text, name=name, part=part: part(f, f"{name}: {text}"))
    table = summary_rows(names, results)
    as_it_comes = results.get("natural") or results[runs[0]]  # the built-in cohort, as the shipped model's data
    result = {"regimes": names, "created": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": code_commit(),
              "data_fingerprint": as_it_comes["data_fingerprint"], "run_config": as_it_comes["config"],
              "seeds": results[runs[0]]["seeds"], "quick": quick, "short": short, "config": config_path and str(config_path), "methods": methods.split(","), "seconds": time.perf_counter() - t0,
              "summary": table, "runs": {n: str(out / n) for n in runs},
              "train": {n: {"complete": results[TRAINED_AS.get(n, n)]["n_train_complete"],
                            "labelled": results[TRAINED_AS.get(n, n)]["n_train_labelled"],
                            "data": results[TRAINED_AS.get(n, n)]["data"]} for n in names}}
    (out / "regimes.json").write_text(dumps(result))
    (out / "regimes.md").write_text(markdown(result), encoding="utf-8")
    result["figures"] = [str(p) for p in write_figures({"regimes": figure(table)}, out)]
    result["out"] = str(out)
    return result


def summary_rows(names: list[str], results: dict[str, dict]) -> list[dict]:
    """Per regime and compared method: both mean AUROCs, the difference, its interval, Holm's p, direction."""
    rows = []
    for name in names:
        key = HEADLINE.get(name, "patterns")
        for r in results[TRAINED_AS.get(name, name)]["bootstraps"].get(key, []):
            rows.append({"regime": name, "comparison": key, "method": r["method"], "auroc_robustmdiff": r["auroc_reference"],
                         "auroc_method": r["auroc"], "difference": r["difference"], "low": r["low"], "high": r["high"],
                         "p_holm": r["p_holm"], "direction": r["direction"],
                         "seeds_resampled": bool(r.get("seeds_resampled", False))})
    return rows


def frame(rows: list[dict]) -> pd.DataFrame:
    """The summary as read: AUROC points, the interval, better and worse in words."""
    return pd.DataFrame([{"regime": REGIMES[r["regime"]].title, "compared with": display_name(r["method"]),
                          "RobustMDiff": f"{100 * r['auroc_robustmdiff']:.1f}", "method": f"{100 * r['auroc_method']:.1f}",
                          "difference": f"{100 * r['difference']:+.2f}",
                          "95 % interval": f"[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]",
                          "p (Holm)": verdicts.p_value(r["p_holm"]), "reading": verdicts.READING[r["direction"]]} for r in rows])


def markdown(result: dict) -> str:
    lines = ["## RobustMDiff against each method, regime by regime", "",
             "Macro AUROC (%) of RobustMDiff and of the compared method, averaged over every availability pattern of "
             "the complete test cases (MNAR: 50 % of modalities missing, more often for severe and rare cases); the "
             "difference in points with its 95 % interval, p Holm-corrected across the methods of a regime. "
             + interval_words(result["summary"]), "",
             frame(result["summary"]).to_markdown(index=False, disable_numparse=True), "", "Training data per regime:", ""]
    lines += [f"- {REGIMES[n].title}: {t['complete']} complete training cases, {t['labelled']} labelled "
              f"(data/{Path(t['data']).name})"
              for n, t in result["train"].items()]
    return "\n".join(lines) + "\n"


def interval_words(rows: list[dict]) -> str:
    """What the study's intervals resampled: seeds and cases only where every comparison had several seeds."""
    if rows and all(r.get("seeds_resampled") for r in rows):
        return ("Intervals from the hierarchical bootstrap: each method's training seeds and the test cases "
                "resampled, so they include training variance.")
    return ("Intervals from the paired bootstrap over test cases only (one seed per method, or a study made before "
            "seeds were resampled): they leave training variance out.")


def figure(rows: list[dict]) -> go.Figure:
    """RobustMDiff − method per regime, with its interval: above zero the diffusion model is better."""
    df = pd.DataFrame(rows)
    fig = go.Figure()
    if df.empty:
        return fig
    order = [n for n in REGIMES if n in set(df.regime)]
    methods = list(dict.fromkeys(df.method))
    width = 0.6 / max(1, len(methods))  # methods side by side within a regime: the regimes are not a continuum
    for i, method in enumerate(methods):
        sub = df[df.method == method].set_index("regime").reindex(order).dropna(subset=["difference"])
        x = [order.index(n) + (i - (len(methods) - 1) / 2) * width for n in sub.index]
        fig.add_trace(go.Scatter(
            x=x, y=100 * sub.difference, mode="markers", name=display_name(method),
            marker=dict(size=10, color=COLOURS[i % len(COLOURS)], symbol="diamond" if method == "no_diffusion" else "circle"),
            error_y=dict(type="data", symmetric=False, array=100 * (sub.high - sub.difference),
                         arrayminus=100 * (sub.difference - sub.low)),
            hovertext=[REGIMES[n].title for n in sub.index]))
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(order))), ticktext=[REGIMES[n].short for n in order])
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(title="RobustMDiff minus each method, macro AUROC points, with 95 % bootstrap intervals"
                            "<br><sup>above zero: RobustMDiff better; w/o diffusion is the diffusion's own contribution</sup>",
                      yaxis_title="difference (AUROC points)", height=560, margin=dict(l=10, r=10, t=80, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0))
    return fig
