"""How well the calibrated numbers hold on the test split (`python -m core calibration`).

- Synthesis confidence, per modality: every complete test case is predicted from every subset of its
  modalities; for each view missing modality i, the confidence is compared with whether adding the real
  modality left the answer unchanged (ECE, AUROC, Brier, reliability bins), and with the confidence the
  same view gets under another sampler seed (seed sensitivity).
- Class probabilities under natural missingness: top-label ECE, Brier, and mean predicted probability of
  each class against its prevalence.
- Which test next (`next_test.py`): on views missing two or more modalities, how often each ranking rule
  puts first the modality whose real value changes the answer most (top-1 agreement, bootstrap interval
  over cases, against chance), the rule chosen on validation views, and whether it beat chance on test.
- Assumed lab values: coverage of the 80 % intervals on test cases whose labs were hidden.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from core.calibration.assumed import interval_hits
from core.calibration.next_test import next_test_report, summary_line, validation_summary
from core.calibration.views import Views, case_views
from core.data.dataset import Dataset
from core.evaluation.metrics import binary_ece, brier, ece_noise_floor, expected_calibration_error, reliability_bins
from core.features import FeatureTable
from core.inference import predict_table
from core.jsonout import dumps
from core.model.robustmdiff import RobustMDiff

TARGETS = {"confidence_ece": 0.05, "confidence_auroc": 0.75, "seed_sensitivity": 0.03, "probability_ece": 0.03,
           "prevalence_gap": 0.02, "coverage": (0.75, 0.85)}


def _confidence(model: RobustMDiff, views: Views, other: Views) -> tuple[dict, dict]:
    answer = views.answer()
    conf, sens = {}, {}
    for i, name in enumerate(model.info.names):
        src, ref = views.pairs(i)
        if not len(src):
            continue
        c, unchanged = views.out.confidence[src, i], (answer[src] == answer[ref]).astype(float)
        both = 0 < unchanged.mean() < 1
        conf[name] = {"n": int(len(src)), "ece": binary_ece(c, unchanged), "ece_noise_floor": ece_noise_floor(c, 10),
                      "brier": float(((c - unchanged) ** 2).mean()),
                      "auroc": float(roc_auc_score(unchanged, c)) if both else float("nan"),
                      "mean_confidence": float(c.mean()), "unchanged_rate": float(unchanged.mean()),
                      "min": float(c.min()), "max": float(c.max()),
                      "exactly_0_or_1": int(((c == 0) | (c == 1)).sum()), "bins": reliability_bins(c, unchanged)}
        sens[name] = float(np.abs(c - other.out.confidence[src, i]).mean())
    return conf, sens


def _coverage(model: RobustMDiff, table: FeatureTable, views: Views) -> dict:
    out = {}
    for name in model.decoders:
        real, _, low, high = interval_hits(model, table, views, name)
        ok = np.isfinite(real) & np.isfinite(low)
        inside = (real >= low) & (real <= high)
        labs = model.info.labs[name]
        out[name] = {"coverage": float(inside[ok].mean()) if ok.any() else float("nan"), "n_values": int(ok.sum()),
                     "per_lab": {lab: float(inside[ok[:, j], j].mean()) for j, lab in enumerate(labs) if ok[:, j].sum() >= 10}}
    return out


def _validation_next_test(model: RobustMDiff, ds: Dataset, table: FeatureTable, device, seed: int) -> dict:
    va = ds.indices("val")
    return validation_summary(case_views(model, table, va[table.present[va].all(1)], seed=seed, device=device))


def complete_test_views(model: RobustMDiff, ds: Dataset, table: FeatureTable, device=None, seed: int = 0) -> Views:
    """Every complete test case predicted from every subset of its modalities (the report's first seed)."""
    te = ds.indices("test")
    return case_views(model, table, te[table.present[te].all(1)], seed=seed, device=device)


def calibration_report(model: RobustMDiff, ds: Dataset, table: FeatureTable, device=None, seeds=(0, 1),
                       views: Views | None = None, natural: np.ndarray | None = None,
                       validation: dict | None = None) -> dict:
    """`views`: `complete_test_views` under seeds[0] and `natural`: the test split's probabilities as the data come (seed
    0), when the caller has them already (training computes both for its test metrics): they are not redrawn.
    `validation`: the 'which test next' rules measured on validation views (`calibrate`'s `next_test`); without
    it the complete validation cases are predicted from every subset of their modalities here."""
    te = ds.indices("test")
    complete = te[table.present[te].all(1)]
    views = views if views is not None else case_views(model, table, complete, seed=seeds[0], device=device)
    other = case_views(model, table, complete, seed=seeds[1], device=device)
    conf, sens = _confidence(model, views, other)
    probs = natural if natural is not None else predict_table(model, table, te, None, device=device, describe=False).probs
    y = ds.labels[te]
    prevalence = np.bincount(y, minlength=len(model.info.classes)) / len(y)
    mean_p = probs.mean(0)
    report = {
        "n_test": int(len(te)), "n_complete": int(len(complete)), "seeds": list(seeds),
        "confidence": conf, "seed_sensitivity": sens,
        "probabilities": {"ece": expected_calibration_error(y, probs), "ece_noise_floor": ece_noise_floor(probs.max(1), 15),
                          "brier": brier(y, probs),
                          "prevalence_gap": float(np.abs(mean_p - prevalence).max()),
                          "per_class": {c: {"prevalence": float(prevalence[j]), "mean_predicted": float(mean_p[j])}
                                        for j, c in enumerate(model.info.classes)},
                          "bins": reliability_bins(probs.max(1), (probs.argmax(1) == y).astype(float))},
        "next_test": next_test_report(validation if validation is not None else _validation_next_test(
            model, ds, table, device, seeds[0]), views),
        "assumed_values": _coverage(model, table, views),
    }
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> list[dict]:
    t = TARGETS
    rows = []
    for m, c in report["confidence"].items():
        rows += [{"target": f"{m}: confidence ECE <= {t['confidence_ece']}", "measured": c["ece"], "met": c["ece"] <= t["confidence_ece"]},
                 {"target": f"{m}: confidence AUROC >= {t['confidence_auroc']}", "measured": c["auroc"],
                  "met": bool(c["auroc"] >= t["confidence_auroc"])},
                 {"target": f"{m}: no confidence exactly 0 or 1", "measured": c["exactly_0_or_1"], "met": c["exactly_0_or_1"] == 0}]
    for m, s in report["seed_sensitivity"].items():
        rows.append({"target": f"{m}: seed sensitivity <= {t['seed_sensitivity']}", "measured": s, "met": s <= t["seed_sensitivity"]})
    p = report["probabilities"]
    rows += [{"target": f"class-probability ECE <= {t['probability_ece']} (natural missingness)", "measured": p["ece"],
              "met": p["ece"] <= t["probability_ece"]},
             {"target": f"mean predicted probability within {t['prevalence_gap']} of prevalence (worst class)",
              "measured": p["prevalence_gap"], "met": p["prevalence_gap"] <= t["prevalence_gap"]}]
    lo, hi = t["coverage"]
    for m, a in report["assumed_values"].items():
        rows.append({"target": f"{m}: 80 % interval coverage in [{lo}, {hi}]", "measured": a["coverage"],
                     "met": bool(lo <= a["coverage"] <= hi)})
    return rows


def markdown(report: dict) -> str:
    lines = [f"Test split: {report['n_test']} cases, {report['n_complete']} complete (each predicted from every subset "
             "of its modalities).", "",
             "| modality hidden | views | confidence ECE (noise floor: mean, 95th pct) | AUROC | Brier | mean confidence | "
             "answer unchanged | seed sensitivity | range |", "|---|---|---|---|---|---|---|---|---|"]
    for m, c in report["confidence"].items():
        f0, f95 = c["ece_noise_floor"]
        lines.append(f"| {m} | {c['n']} | {c['ece']:.3f} ({f0:.3f}, {f95:.3f}) | {c['auroc']:.3f} | {c['brier']:.3f} | "
                     f"{c['mean_confidence']:.3f} | {c['unchanged_rate']:.3f} | {report['seed_sensitivity'][m]:.4f} | "
                     f"{c['min']:.3f}–{c['max']:.3f} |")
    p = report["probabilities"]
    lines += ["", f"Class probabilities, natural missingness: top-label ECE {p['ece']:.3f} (a perfectly calibrated model "
              f"would show {p['ece_noise_floor'][0]:.3f} on these cases, 95th percentile {p['ece_noise_floor'][1]:.3f}), "
              f"Brier {p['brier']:.3f}, worst gap between mean predicted probability and prevalence {p['prevalence_gap']:.3f}."]
    if report["next_test"].get("n_views"):
        lines.append(summary_line(report["next_test"]) if "test" in report["next_test"] else _old_next_test_line(report["next_test"]))
    for m, a in report["assumed_values"].items():
        lines.append(f"Assumed {m} values: 80 % interval coverage {a['coverage']:.3f} over {a['n_values']} test values.")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured']:.4g} | {'yes' if r['met'] else 'no'} |" for r in report["targets"]]
    return "\n".join(lines) + "\n"


def _old_next_test_line(nt: dict) -> str:
    """A report from before the rules were compared on validation (shipped checkpoints until retrained)."""
    return (f"Which test next ({nt['n_views']} views missing two or more modalities; chance {nt['top1_chance']:.3f}): "
            f"top-1 agreement with the modality whose real value changes the answer most, ranked by expected change "
            f"{nt['top1_agreement_expected_change']:.3f}, by calibrated probability of change "
            f"{nt['top1_agreement_probability_of_change']:.3f} (no interval, no rule chosen on validation).")


def reliability_figure(report: dict, path: Path) -> Path:
    """One panel per hidden modality (confidence vs answer unchanged) and one for the class probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"synthesized {m}: confidence", c["bins"]) for m, c in report["confidence"].items()]
    panels.append(("class probabilities (top class)", report["probabilities"]["bins"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    for ax, (title, bins) in zip(axes[0], panels):
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", color="#1f77b4")
        for b in bins:
            ax.annotate(str(b["n"]), (b["mean_predicted"], b["observed"]), fontsize=6, xytext=(2, -8),
                        textcoords="offset points", color="0.4")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=title, xlabel="predicted")
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("observed (answer unchanged / correct)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(dumps(report), encoding="utf-8")
    (out / "calibration.md").write_text(markdown(report), encoding="utf-8")
    reliability_figure(report, out / "reliability.png")
