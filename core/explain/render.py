"""Turn an explanation into pictures and HTML: the heatmap overlaid on the scan, the note with its
words highlighted, lab bars, and a self-contained case report (one HTML file, images inlined)."""

from __future__ import annotations

import base64
import html
import io

import matplotlib
import numpy as np
from PIL import Image

from core.data.readers import Scan
from core.explain.explanation import Explanation
from core.explain.image import to_scan
from core.explain.text import WordAttribution

DISCLAIMER = "Research software, not a medical device. Not for diagnosis or treatment decisions."


def normalise(heat: np.ndarray, positive_only: bool = True) -> np.ndarray:
    """Attribution → [0, 1]: the positive evidence for the predicted class, scaled by its 99th percentile."""
    h = np.clip(heat, 0, None) if positive_only else np.abs(heat)
    top = np.percentile(h, 99) if h.max() > 0 else 1.0
    return np.clip(h / max(top, 1e-12), 0, 1)


def overlay(gray: np.ndarray, heat: np.ndarray, opacity: float = 0.5, cmap: str = "inferno",
            positive_only: bool = True) -> np.ndarray:
    """RGB uint8 image: the scan in grey, the heatmap blended on top where it is strong."""
    if heat.shape != gray.shape:
        heat = to_scan(heat, gray.shape)
    h = normalise(heat, positive_only)
    colours = matplotlib.colormaps[cmap](h)[..., :3]
    base = np.repeat(gray[..., None], 3, -1)
    alpha = (opacity * h)[..., None]
    return (np.clip(base * (1 - alpha) + colours * alpha, 0, 1) * 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def note_html(text: str, words: list[WordAttribution]) -> str:
    """The note with words shaded green (for the predicted class) or red (against), keeping the layout."""
    scale = max([abs(w.score) for w in words], default=0.0) or 1.0
    out, pos = [], 0
    for w in words:
        out.append(html.escape(text[pos:w.start]))
        a = min(1.0, abs(w.score) / scale)
        colour = f"rgba(22,163,74,{a:.2f})" if w.score > 0 else f"rgba(220,38,38,{a:.2f})"
        out.append(f'<span title="{w.score:+.2e}" style="background:{colour};border-radius:3px">'
                   f"{html.escape(text[w.start:w.end])}</span>" if a > 0.05 else html.escape(text[w.start:w.end]))
        pos = w.end
    out.append(html.escape(text[pos:]))
    return '<div style="white-space:pre-wrap;font-family:monospace;line-height:1.6">' + "".join(out) + "</div>"


def legend_html() -> str:
    return ('<p><span style="background:rgba(22,163,74,0.8);padding:0 6px">supports the prediction</span> '
            '<span style="background:rgba(220,38,38,0.8);padding:0 6px">argues against it</span> '
            "(shade = strength)</p>")


def _bar(value: float, scale: float) -> str:
    width = int(100 * min(1.0, abs(value) / (scale or 1.0)))
    colour = "#16a34a" if value > 0 else "#dc2626"
    return f'<div style="background:{colour};height:10px;width:{width}px"></div>'


OUTSIDE = "Outside what this model was trained on"


def guard_banner_html(p) -> str:  # p: core.inference.Prediction
    """The banner a report carries when an input is unlike the training data (empty otherwise)."""
    if not p.outside_training:
        return ""
    items = "".join(f"<li>{html.escape(m)}</li>" for m in p.guard_messages())
    return (f"<div style='border:2px solid #b91c1c;background:#fef2f2;padding:8px 14px;margin:12px 0'>"
            f"<b>{OUTSIDE}.</b> The answer below is unlikely to mean anything for these inputs:<ul>{items}</ul></div>")


def report_html(exp: Explanation, case_inputs: dict, opacity: float = 0.5, cmap: str = "inferno",
                include_annotated: bool = False) -> str:
    """A self-contained HTML case report of a prediction and its explanation. A scan whose pixels may carry
    burned-in patient details (`Scan.pixel_identifiers`) is left out unless `include_annotated`."""
    p = exp.prediction
    style = "color:#9ca3af;text-decoration:line-through" if p.outside_training else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>RobustMDiff case report</title></head>"
             "<body style='font-family:system-ui,sans-serif;max-width:960px;margin:auto'>",
             f"<h1>RobustMDiff case report</h1><p><b>{html.escape(DISCLAIMER)}</b></p>", guard_banner_html(p),
             f"<p>Case: {html.escape(exp.case_id)} · prediction: <b style='{style}'>{html.escape(p.prediction)}</b> · "
             f"explanation method: {html.escape(exp.method)} · device {html.escape(p.device)}</p>",
             "<h2>Class probabilities</h2><table>"]
    for c, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]):
        parts.append(f"<tr><td>{html.escape(c)}</td><td>{v:.1%}</td><td>{_bar(v, 1.0)}</td></tr>")
    parts.append("</table><h2>What each modality contributed</h2><table><tr><th>modality</th><th>status</th>"
                 "<th>gradient share</th><th>change in p when removed</th></tr>")
    for c in exp.contributions:
        pert = "–" if np.isnan(c["perturbation"]) else f"{c['perturbation']:+.3f}"
        parts.append(f"<tr><td>{c['modality']}</td><td>{c['status']}</td><td>{c['gradient']:.1%}</td><td>{pert}</td></tr>")
    parts.append("</table>")
    if p.synthesized:
        parts.append("<h2>Missing modalities</h2><p>Synthesis confidence: the probability that the answer stays the "
                     "same when the real modality is added (learned on validation cases).</p><table><tr><th>modality</th>"
                     "<th>synthesis confidence</th><th>expected change of the answer if acquired</th>"
                     "<th>what the synthesis assumed</th></tr>")
        for m, s in p.synthesized.items():
            parts.append(f"<tr><td>{html.escape(m)}</td><td>{s['confidence']:.0%}</td><td>{s['expected_change']:.1%}</td>"
                         f"<td>{html.escape(p.assumed_text(m, top=len(s.get('expected_values', {})) or 3))}</td></tr>")
        parts.append(f"</table><p>Which test next: <b>{html.escape(p.next_test or '–')}</b></p>")
    for name, heat in exp.image.items():
        scan = case_inputs[name]
        if isinstance(scan, Scan) and scan.pixel_identifiers and not include_annotated:
            parts.append(f"<h2>Scan</h2><p>Left out of this report: {html.escape(scan.pixel_identifiers)}.</p>")
            continue
        gray = scan.display() if isinstance(scan, Scan) else None
        if gray is not None:
            img = base64.b64encode(png_bytes(overlay(gray, heat, opacity, cmap))).decode()
            parts.append(f"<h2>Scan ({html.escape(exp.image_method[name])})</h2>"
                         f"<img style='max-width:512px' src='data:image/png;base64,{img}'>")
    for name, words in exp.note.items():
        parts.append(f"<h2>Note</h2>{legend_html()}{note_html(case_inputs[name], words)}")
    for name, rows in exp.labs.items():
        scale = max([abs(r.score) for r in rows], default=1.0)
        parts.append("<h2>Labs, ranked by influence</h2><table><tr><th>lab</th><th>value</th><th>reference</th>"
                     "<th>flag</th><th>attribution</th><th></th><th>IG</th><th>SHAP</th></tr>")
        for r in rows:
            if r.value is None:
                parts.append(f"<tr><td>{html.escape(r.label)}</td><td>not measured</td>"
                             f"<td>{html.escape(r.reference)}</td><td></td><td>–</td><td></td><td>–</td><td>–</td></tr>")
                continue
            parts.append(f"<tr><td>{html.escape(r.label)}</td><td>{r.value:.4g} {html.escape(r.unit)}</td>"
                         f"<td>{html.escape(r.reference)}</td><td>{r.flag}</td><td>{r.score:+.2e}</td>"
                         f"<td>{_bar(r.score, scale)}</td><td>{r.integrated_gradients:+.2e}</td><td>{r.shap:+.2e}</td></tr>")
        parts.append("</table>")
    parts.append(f"<p style='color:#666'>{html.escape(DISCLAIMER)}</p></body></html>")
    return "".join(parts)
