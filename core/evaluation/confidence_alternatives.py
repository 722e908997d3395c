"""Does the diffusion earn its place beyond accuracy? The synthesis confidence against confidences that need no
generative model (issue 28).

The question every confidence here answers is the synthesis confidence's: "would the answer stay the same if the
missing modality were measured?". On every complete test case, predicted from every subset of its modalities
(core/calibration/views.py), each view that lacks modality i is labelled by whether its model's answer stays the
same once i is added. Scores compared, by how well they separate kept from changed answers (AUROC):

- RobustMDiff's synthesis confidence (learned on validation views from the diffusion samples' spread and more);
- non-generative alternatives: the top probability and the negative predictive entropy of RobustMDiff's own answer
  and of each comparison model's (e.g. the modality-dropout baseline), and a comparison model's agreement under
  test-time modality dropout (the share of its answers with one more given modality dropped that equal its answer;
  defined for views of two or more modalities, so reported on those views).

Differences come from a paired bootstrap over test cases (every view of a resampled case goes with it), each on
the views where the alternative is defined.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from core.calibration.views import Views, case_views
from core.data.dataset import Dataset
from core.features import FeatureTable
from core.model.robustmdiff import RobustMDiff

REFERENCE = "synthesis confidence (RobustMDiff)"


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


def dropout_agreement(views: Views) -> np.ndarray:
    """Per view: the share of the same case's views with one given modality fewer whose answer equals this view's
    (NaN for a view of one modality: nothing left to drop)."""
    index = {(int(r), g.tobytes()): v for v, (r, g) in enumerate(zip(views.rows, views.given))}
    answer = views.answer()
    out = np.full(len(views.rows), np.nan)
    for v, (r, g) in enumerate(zip(views.rows, views.given)):
        if g.sum() < 2:
            continue
        same = []
        for j in np.flatnonzero(g):
            fewer = g.copy()
            fewer[j] = False
            w = index.get((int(r), fewer.tobytes()))
            if w is not None:
                same.append(answer[w] == answer[v])
        out[v] = float(np.mean(same)) if same else np.nan
    return out


def view_scores(views: Views, name: str, reference: bool) -> dict[str, np.ndarray]:
    """Scores per view of one model: higher means 'the answer will stay'."""
    probs = views.out.probs
    scores = {f"top probability ({name})": probs.max(1), f"negative entropy ({name})": -_entropy(probs)}
    if not reference:
        scores[f"agreement under modality dropout ({name})"] = dropout_agreement(views)
    return scores


def labelled_pairs(views: Views, n_modalities: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (view without i, same case's view with i) pairs over i: the source views, whether the answer stayed,
    and which modality was missing."""
    answer = views.answer()
    src_all, kept_all, which = [], [], []
    for i in range(n_modalities):
        src, ref = views.pairs(i)
        src_all.append(src)
        kept_all.append(answer[src] == answer[ref])
        which.append(np.full(len(src), i))
    return np.concatenate(src_all), np.concatenate(kept_all), np.concatenate(which)


def _auroc(kept: np.ndarray, score: np.ndarray) -> float:
    ok = np.isfinite(score)
    kept, score = kept[ok], score[ok]
    return float(roc_auc_score(kept, score)) if 0 < kept.mean() < 1 else float("nan")


def compare(entries: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int = 2000,
            seed: int = 0) -> list[dict]:
    """`entries`: score name -> (case of each labelled view, kept, score), every entry's views in the same order
    (`labelled_pairs` of the same cases and subsets). The reference (REFERENCE) against each other score: both
    AUROCs on the views where the other score is defined, their difference with a 95 % interval and a two-sided p
    from a paired bootstrap over cases."""
    case_ref, kept_ref, score_ref = entries[REFERENCE]
    rng = np.random.default_rng(seed)
    cases = np.unique(case_ref)
    draws = [rng.choice(cases, len(cases)) for _ in range(n_boot)]
    where = {c: np.flatnonzero(case_ref == c) for c in cases}
    picks = [np.concatenate([where[c] for c in drawn]) for drawn in draws]
    out = []
    for name, (case, kept, score) in entries.items():
        if name == REFERENCE:
            continue
        if not np.array_equal(case, case_ref):
            raise ValueError(f"{name}: its views are not the reference's (other cases or another order)")
        ok = np.isfinite(score)
        ref_auroc, auroc = _auroc(kept_ref[ok], score_ref[ok]), _auroc(kept[ok], score[ok])
        diff = np.array([_auroc(kept_ref[rows][ok[rows]], score_ref[rows][ok[rows]])
                         - _auroc(kept[rows][ok[rows]], score[rows][ok[rows]]) for rows in picks])
        diff = diff[np.isfinite(diff)]
        p = float(min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean()))) if len(diff) else float("nan")
        out.append({"score": name, "auroc": auroc, "reference_auroc": ref_auroc, "difference": ref_auroc - auroc,
                    "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))] if len(diff) else None,
                    "p": p, "views": int(ok.sum())})
    return out


def alternatives_report(model: RobustMDiff, others: dict[str, RobustMDiff], ds: Dataset, table: FeatureTable,
                        device=None, seed: int = 0, n_boot: int = 2000) -> dict:
    """The synthesis confidence of `model` against non-generative confidences of `model` and of `others` (name ->
    a comparison model, e.g. dropout_0.5), on the complete test cases."""
    te = ds.indices("test")
    rows = te[table.present[te].all(1)]
    m = len(model.info.names)
    views = case_views(model, table, rows, seed=seed, device=device)
    src, kept, which = labelled_pairs(views, m)
    case = views.rows[src]
    entries = {REFERENCE: (case, kept, views.out.confidence[src, which])}
    entries |= {k: (case, kept, v[src]) for k, v in view_scores(views, "RobustMDiff", True).items()}
    unchanged = {"RobustMDiff": float(kept.mean())}
    for name, other in others.items():
        ov = case_views(other, table, rows, seed=seed, device=device, describe=False)
        o_src, o_kept, _ = labelled_pairs(ov, m)
        unchanged[name] = float(o_kept.mean())
        entries |= {k: (ov.rows[o_src], o_kept, v[o_src]) for k, v in view_scores(ov, name, False).items()}
    return {"n_cases": int(len(rows)), "n_views": int(len(src)), "unchanged_rate": unchanged, "bootstrap": n_boot,
            "rows": compare(entries, n_boot, seed)}


def markdown(report: dict) -> str:
    lines = [f"Views of {report['n_cases']} complete test cases missing a modality ({report['n_views']} per model): "
             "AUROC for 'the answer stays the same when the missing modality is measured' (each model's own answer). "
             f"Difference = synthesis confidence minus the alternative; paired bootstrap over cases ({report['bootstrap']} "
             "resamples).", "", "| confidence | views | AUROC | synthesis confidence (same views) | difference (95 % interval) | p |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ci = f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]" if r["ci95"] else "—"
        p = f"< {1 / report['bootstrap']:.2g}" if r["p"] == 0 else f"{r['p']:.3g}"  # no resample crossed zero
        lines.append(f"| {r['score']} | {r['views']} | {r['auroc']:.3f} | {r['reference_auroc']:.3f} | "
                     f"{r['difference']:+.3f} {ci} | {p} |")
    return "\n".join(lines)
