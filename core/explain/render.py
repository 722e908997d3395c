"""Turn an explanation into pictures and HTML: the heatmap overlaid on each image modality with a colour bar that
says what it shows, each text modality with its phrases highlighted (each word's own score in the tooltip), the
values of each tabular modality ranked, and a self-contained case report (one HTML file, images inlined). Every
heading and sentence names the open model's own modalities (a model of your own need not read a scan, a note and
labs), and a colour photograph (e.g. a dermoscopic image) is drawn in colour, though the model reads it in grey."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from core.data.readers import Scan
from core.data.readers.scan import apply_window
from core.explain.explanation import Explanation
from core.explain.image import to_scan
from core.explain.phrases import PhraseAttribution, phrase_attributions
from core.explain.text import WordAttribution
from core.names import display_name

DISCLAIMER = "Research software, not a medical device. Not for diagnosis or treatment decisions."
CMAPS = ("inferno", "jet", "viridis", "hot")


def evidence_map(heat: np.ndarray, fov: np.ndarray | None = None, cells: int | None = None,
                 positive_only: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Attribution → each location's share of the positive attribution (of |attribution| without
    `positive_only`) inside the field of view `fov` (bool, at the map's resolution; None: everywhere).
    With `cells` (the model's effective resolution, cells per side) the shares are those of the cells,
    each cell's pixels showing its share, so the map draws as blocks. Returns the share map (at least 256
    pixels per side when the map is the cell grid itself, so that blocks stay blocks when scaled to the
    scan) and the field of view at the same size."""
    h = (np.clip(heat, 0, None) if positive_only else np.abs(heat)).astype(np.float64)
    inside = None
    if fov is not None:
        inside = np.asarray(fov, bool)
        if inside.shape != h.shape:
            inside = _resize(inside.astype(np.float32), h.shape, nearest=True) > 0.5
        h = np.where(inside, h, 0.0)
    if cells and cells < min(h.shape):
        if h.shape[0] % cells == 0 and h.shape[1] % cells == 0:
            f0, f1 = h.shape[0] // cells, h.shape[1] // cells
            grid = h.reshape(cells, f0, cells, f1).sum((1, 3))
            share = np.kron(grid / max(grid.sum(), 1e-300), np.ones((f0, f1)))
        else:
            grid = _resize(h, (cells, cells), nearest=False)
            share = _resize(grid / max(grid.sum(), 1e-300), h.shape, nearest=True)
        share = share if grid.sum() > 0 else np.zeros_like(h)
    else:
        share = h / h.sum() if h.sum() > 0 else h
        if cells and cells == h.shape[0] and h.shape[0] < 256:  # the map is the cell grid: blocks
            k = -(-256 // h.shape[0])
            share = np.kron(share, np.ones((k, k)))
            inside = None if inside is None else np.kron(inside, np.ones((k, k), bool))
    return share, inside


def _resize(a: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((shape[1], shape[0]), mode))


def heat_scale(heat: np.ndarray, fov: np.ndarray | None = None, cells: int | None = None,
               positive_only: bool = True) -> tuple[float, float, bool]:
    """(low, high, saturated): the range of shares the colours span. On the cell grid, min to max; on a
    pixel map (no cell grid known), min to the 99th percentile, the few pixels above it drawn at full
    colour (`saturated`), so that a handful of extreme pixels do not leave the rest of the map invisible."""
    return _scale(*evidence_map(heat, fov, cells, positive_only), cells)


def _scale(share: np.ndarray, inside: np.ndarray | None, cells: int | None) -> tuple[float, float, bool]:
    vals = share[inside] if inside is not None and inside.any() else share.ravel()
    low, top = float(vals.min()), float(vals.max())
    if cells:
        return low, top, False
    high = float(np.percentile(vals, 99))
    return (low, high, high < top) if high > low else (low, top, False)


def overlay(gray: np.ndarray, heat: np.ndarray, opacity: float = 0.5, cmap: str = "inferno",
            positive_only: bool = True, fov: np.ndarray | None = None, cells: int | None = None) -> np.ndarray:
    """RGB uint8 image: the scan in grey (or a colour photograph: `gray` (H, W, 3), see `colour_view`), the
    heatmap blended on top where it is strong; nothing is drawn outside the field of view `fov` (when given),
    and with `cells` the map is drawn as the model's cell grid."""
    share, inside = evidence_map(heat, fov, cells, positive_only)
    high = _scale(share, inside, cells)[1]
    h = np.clip(share / high, 0, 1) if high > 0 else share  # the colour bar's scale
    shape = gray.shape[:2]
    if h.shape != shape:
        h = np.clip(to_scan(h, shape), 0, 1)
        if inside is not None:
            inside = to_scan(inside.astype(np.float32), shape) > 0.5
    if inside is not None:
        h = np.where(inside, h, 0.0)
    colours = matplotlib.colormaps[cmap](h)[..., :3]
    base = gray if gray.ndim == 3 else np.repeat(gray[..., None], 3, -1)
    alpha = (opacity * h)[..., None]
    return (np.clip(base * (1 - alpha) + colours * alpha, 0, 1) * 255).astype(np.uint8)


def colour_view(source: bytes | str | Path, scan: Scan) -> np.ndarray | None:
    """The photograph's own colours, (H, W, 3) float32 on the grey plane's pixel grid and scale (0-255), when
    `source` is a single-frame colour raster (PNG, JPEG, TIFF, BMP) of the 2D `scan` read from it; None
    otherwise (grey images, DICOM, volumes, anything unreadable: the grey display is then used). The reader
    reduces colour to luminance because the model reads grey; only the display is given the colours back."""
    if scan.is_volume or scan.source_format not in ("png", "jpeg", "tiff", "bmp"):
        return None
    try:
        with Image.open(source if not isinstance(source, bytes) else io.BytesIO(source)) as img:
            if getattr(img, "n_frames", 1) != 1 or img.mode in ("L", "I", "I;16", "I;16B", "F", "1", "LA"):
                return None
            h, w = scan.pixels.shape[1:]
            if max(img.size) > 2 * max(h, w):
                img.draft("RGB", (w, h))  # a huge JPEG: decode at reduced size
            rgb = img.convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


def display_image(scan: Scan, colour: np.ndarray | None = None, window: tuple[float, float] | None = None) -> np.ndarray:
    """What is drawn of an image: the grey plane windowed to [0, 1] (`Scan.display`), or, for a colour
    photograph (`colour_view`), each channel through the same window, (H, W, 3)."""
    if colour is None or colour.shape[:2] != scan.pixels.shape[1:]:
        return scan.display(window)
    return apply_window(colour, window or scan.default_window(), scan.invert)


def _share(x: float) -> str:
    return f"{100 * x:.3g} %"


def colorbar_html(cmap: str, target: str, low: float, high: float, cells: int | None = None,
                  fov: bool = False, positive_only: bool = True, saturated: bool = False) -> str:
    """The heatmap's colour scale and what it shows, as an HTML strip with its two ends labelled (the top
    end '≥' when the few locations above it are drawn at full colour)."""
    stops = ", ".join(matplotlib.colors.to_hex(matplotlib.colormaps[cmap](x)) for x in np.linspace(0, 1, 11))
    what = "positive attribution" if positive_only else "|attribution|"
    where = (f"per cell of the model's {cells}×{cells} feature grid (drawn as blocks)" if cells
             else "per pixel of the model's input")
    scope = "inside the field of view (nothing drawn outside it)" if fov else "over the whole image"
    return (f"<div style='font-size:0.85em;margin:4px 0 10px 0'>"
            f"<div>Evidence for <b>{html.escape(target)}</b>: share of {what} {where}, {scope}</div>"
            f"<div style='display:flex;align-items:center;gap:6px'><span>{_share(low)}</span>"
            f"<div style='flex:0 0 240px;height:12px;background:linear-gradient(to right, {stops})'></div>"
            f"<span>{'≥ ' if saturated else ''}{_share(high)}</span>"
            f"{' (the top 1 % of pixels at full colour)' if saturated else ''}</div></div>")


def image_legend_html(exp: Explanation, name: str, cmap: str, positive_only: bool = True) -> str:
    fov, cells = exp.image_fov.get(name), exp.image_resolution.get(name)
    low, high, saturated = heat_scale(exp.image[name], fov, cells, positive_only)
    return colorbar_html(cmap, display_name(exp.target), low, high, cells, fov is not None, positive_only, saturated)


COMPLETENESS = ("Integrated Gradients' relative completeness error: |Σ attributions − (f(input) − f(baseline))| / "
                "|f(input) − f(baseline)|, f = log p(predicted class); the steps grow until it is ≤ 5 % (or the cap).")


BASELINES = {"image": "its blurred map", "text": "every word [PAD]", "tabular": "the training mean"}


def held_fixed_text(modalities: list[tuple[str, str]]) -> str:
    """What is varied and what held fixed, naming the given (name, kind) modalities and each one's baseline."""
    baselines = "; ".join(f"{', '.join(n for n, k in modalities if k == kind)}: {base}"
                          for kind, base in BASELINES.items() if any(k == kind for _, k in modalities))
    return ("What is explained is the probability shown. Each input is varied alone from its baseline "
            f"({baselines}) while the other inputs given stay "
            "as they are. When a modality is missing, its synthesized samples travel with the input, from those the "
            "model synthesizes for the baseline input to those it synthesized for this case, so the attributions add "
            "up to the change of the shown prediction; the samples' share is the input's influence through what it "
            "made the model assume, given beside each input and not drawn on it. Held fixed: the other inputs "
            "given, the diffusion noise and the calibration.")


def explained_modalities(exp: Explanation) -> list[tuple[str, str]]:
    """The explained (present) modalities of an explanation as (name, kind), in the model's order."""
    kinds = {**{n: "image" for n in exp.image}, **{n: "text" for n in exp.note}, **{n: "tabular" for n in exp.labs}}
    return [(c["modality"], kinds[c["modality"]]) for c in exp.contributions if c["modality"] in kinds]


def explained_parts_text(modalities: list[tuple[str, str]]) -> str:
    """What an explanation shows for these (name, kind) modalities, in words: 'a heatmap on clinic, …'."""
    words = {"image": "a heatmap on {}", "text": "the highlighted words of {}", "tabular": "the ranked values of {}"}
    parts = [words[k].format(n) for n, k in modalities if k in words]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + (parts[-1] if parts else "")


HELD_FIXED = held_fixed_text([("the scan", "image"), ("the note", "text"), ("labs", "tabular")])


def note_units_text(exp: Explanation, name: str) -> str:
    """Which of a text modality's units (clauses or sentences) carry word attributions, and their share of its
    attribution, naming the modality (a model's text need not be a note)."""
    units = exp.note_units.get(name)
    if not units:
        return ""
    total = sum(abs(u.score) for u in units)
    shown = [u for u in units if u.words]
    if len(shown) == len(units):
        return f"Every word of the {len(units)} parts of {name} is attributed."
    share = sum(abs(u.score) for u in shown) / total if total > 0 else 1.0
    return (f"Words are attributed in the {len(shown)} of the {len(units)} parts of {name} (clauses, and negated words "
            f"read apart) that hold {share:.0%} of its attribution; the others are left unshaded "
            "(every word: `python -m core explain --note-words all`).")


def completeness_text(exp: Explanation, name: str) -> str:
    """'IG completeness error X % (N steps)' for a modality with Integrated Gradients attributions, else 'n/a'."""
    shown = exp.image_method.get(name, exp.method)  # the attribution drawn for this modality
    if shown != "integrated_gradients" or name not in exp.completeness or not np.isfinite(exp.completeness[name]):
        return "IG completeness error n/a (not Integrated Gradients)"
    steps = exp.ig_steps.get(name)
    text = f"IG completeness error {exp.completeness[name]:.1%}" + (f" ({steps} steps)" if steps else "")
    through = exp.through_synthesis.get(name, 0.0)
    if through:
        text += f"; {through:.0%} of this input's influence went through what it made the model synthesize"
    return text


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def note_html(text: str, words: list[WordAttribution], phrases: list[PhraseAttribution] | None = None) -> str:
    """The note with each phrase shaded green (for the predicted class) or red (against) by its score, the
    sum of its words' (core/explain/phrases.py), keeping the layout; the tooltip gives the phrase's score
    and every word's own."""
    phrases = phrase_attributions(text, words) if phrases is None else phrases
    scale = max([abs(p.score) for p in phrases], default=0.0) or 1.0
    out, pos = [], 0
    for p in phrases:
        out.append(html.escape(text[pos:p.start]))
        a = min(1.0, abs(p.score) / scale)
        colour = f"rgba(22,163,74,{a:.2f})" if p.score > 0 else f"rgba(220,38,38,{a:.2f})"
        tip = f"phrase {p.score:+.2e}&#10;" + "&#10;".join(html.escape(f"{w.word} {w.score:+.2e}", quote=True)
                                                         for w in p.words)
        out.append(f'<span title="{tip}" style="background:{colour};border-radius:3px">'
                   f"{html.escape(text[p.start:p.end])}</span>")
        pos = p.end
    out.append(html.escape(text[pos:]))
    return '<div style="white-space:pre-wrap;font-family:monospace;line-height:1.6">' + "".join(out) + "</div>"


def legend_html() -> str:
    return ('<p><span style="background:rgba(22,163,74,0.8);padding:0 6px">supports the prediction</span> '
            '<span style="background:rgba(220,38,38,0.8);padding:0 6px">argues against it</span> '
            "(shade = the phrase's score, the sum of its words'; hover a phrase for each word's own)</p>")


def _bar(value: float, scale: float) -> str:
    width = int(100 * min(1.0, abs(value) / (scale or 1.0)))
    colour = "#16a34a" if value > 0 else "#dc2626"
    return f'<div style="background:{colour};height:10px;width:{width}px"></div>'


OUTSIDE = "Outside what this model was trained on"
REMOVED = ("change in p({target}) when removed: p with the modality switched off − p as given (negative: the "
           "modality supported the prediction; the same as switching it off in the app)")


def _pct(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.1%}"


def contributions_html(exp: Explanation) -> str:
    """What each present modality contributed (gradient share over the present modalities, change when
    removed), and the synthesized ones on their own, without a share."""
    target = display_name(exp.target)
    head = html.escape(REMOVED.format(target=target))
    rows = ["<h2>What each modality contributed</h2><table><tr><th>modality</th><th title='the gradient magnitude "
            "|∂p/∂H_i| of each present modality&#39;s representation H_i, as a share over the present modalities'>"
            "share of influence</th>"
            f"<th title='{head}'>change in p({html.escape(target)}) when removed</th></tr>"]
    for c in exp.present_contributions():
        ch = c["change_when_removed"]
        rows.append(f"<tr><td>{html.escape(c['modality'])}</td><td>{_pct(c['gradient'])}</td>"
                    f"<td>{'–' if not np.isfinite(ch) else f'{ch:+.3f}'}</td></tr>")
    rows.append(f"</table><p style='color:#555;font-size:0.85em'>{head}. Shares are over the present modalities only.</p>")
    missing = exp.missing_contributions()
    if missing:
        items = ", ".join(html.escape(c["modality"]) + (f" (synthesis confidence {c['synthesis_confidence']:.0%})"
                                                        if "synthesis_confidence" in c else "") for c in missing)
        rows.append(f"<p>Synthesized, not observed (no share): {items}.</p>")
    return "".join(rows)


def guard_banner_html(p) -> str:  # p: core.prediction.Prediction
    """The banner a report carries when an input is unlike the training data (empty otherwise)."""
    if not p.outside_training:
        return ""
    items = "".join(f"<li>{html.escape(m)}</li>" for m in p.guard_messages())
    return (f"<div style='border:2px solid #b91c1c;background:#fef2f2;padding:8px 14px;margin:12px 0'>"
            f"<b>{OUTSIDE}.</b> The answer below is unlikely to mean anything for these inputs:<ul>{items}</ul></div>")


def report_html(exp: Explanation, case_inputs: dict, opacity: float = 0.5, cmap: str = "inferno",
                include_annotated: bool = False, colour: dict[str, np.ndarray] | None = None) -> str:
    """A self-contained HTML case report of a prediction and its explanation. A scan whose pixels may carry
    burned-in patient details (`Scan.pixel_identifiers`) is left out unless `include_annotated`. `colour`: the
    colour photographs of image modalities (`colour_view`), drawn in colour under their heatmaps."""
    p = exp.prediction
    style = "color:#9ca3af;text-decoration:line-through" if p.outside_training else ""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>RobustMDiff case report</title></head>"
             "<body style='font-family:system-ui,sans-serif;max-width:960px;margin:auto'>",
             f"<h1>RobustMDiff case report</h1><p><b>{html.escape(DISCLAIMER)}</b></p>", guard_banner_html(p),
             f"<p>Case: {html.escape(exp.case_id)} · prediction: <b style='{style}'>{html.escape(display_name(p.prediction))}</b> · "
             f"explanation method: {html.escape(display_name(exp.method))} · device {html.escape(p.device)}</p>",
             "<h2>Class probabilities</h2><table>"]
    for c, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1]):
        parts.append(f"<tr><td>{html.escape(display_name(c))}</td><td>{v:.1%}</td><td>{_bar(v, 1.0)}</td></tr>")
    parts.append("</table>")
    parts.append(contributions_html(exp))
    if p.synthesized:
        rule = p.next_test_column()  # the ranking's own score, where it is not the chance of change
        parts.append("<h2>Missing modalities</h2><p>Synthesis confidence: the probability that the answer stays the "
                     "same when the real modality is added (learned on validation cases).</p><table><tr><th>modality</th>"
                     "<th>synthesis confidence</th><th>chance the answer changes if acquired</th>"
                     + (f"<th>{html.escape(rule[0])}</th>" if rule else "") + "<th>what the synthesis assumed</th></tr>")
        for m in p.ranked_missing():
            s = p.synthesized[m]
            parts.append(f"<tr><td>{html.escape(m)}</td><td>{s['confidence']:.0%}</td><td>{p.chance_of_change(m):.0%}</td>"
                         + (f"<td>{html.escape(rule[1][m])}</td>" if rule else "")
                         + f"<td>{html.escape(p.assumed_text(m, top=len(s.get('expected_values', {})) or 3))}</td></tr>")
        parts.append(f"</table><p>{html.escape(p.next_test_text())}</p>")
    for name, heat in exp.image.items():
        scan = case_inputs[name]
        if isinstance(scan, Scan) and scan.pixel_identifiers and not include_annotated:
            parts.append(f"<h2>{html.escape(name)}</h2><p>Left out of this report: {html.escape(scan.pixel_identifiers)}.</p>")
            continue
        gray = display_image(scan, (colour or {}).get(name)) if isinstance(scan, Scan) else None
        if gray is not None:
            img = base64.b64encode(png_bytes(overlay(gray, heat, opacity, cmap, fov=exp.image_fov.get(name),
                                                     cells=exp.image_resolution.get(name)))).decode()
            parts.append(f"<h2>{html.escape(name)} ({html.escape(display_name(exp.image_method[name]))})</h2>"
                         f"<p style='color:#555' title='{html.escape(COMPLETENESS)}'>{html.escape(completeness_text(exp, name))}</p>"
                         f"<img style='max-width:512px' src='data:image/png;base64,{img}'>"
                         f"{image_legend_html(exp, name, cmap)}")
    parts.append(f"<p style='color:#555'>{html.escape(held_fixed_text(explained_modalities(exp)))}</p>")
    for name, words in exp.note.items():
        parts.append(f"<h2>{html.escape(name)}</h2><p style='color:#555' title='{html.escape(COMPLETENESS)}'>"
                     f"{html.escape(completeness_text(exp, name))}. {html.escape(note_units_text(exp, name))}</p>"
                     f"{legend_html()}{note_html(case_inputs[name], words, exp.note_phrases.get(name))}")
    for name, rows in exp.labs.items():
        scale = max([abs(r.score) for r in rows], default=1.0)
        parts.append(f"<h2>{html.escape(name)}, ranked by influence ({html.escape(display_name(exp.method))})</h2>"
                     f"<p style='color:#555' title='{html.escape(COMPLETENESS)}'>{html.escape(completeness_text(exp, name))}"
                     "</p><table><tr><th>variable</th><th>value</th><th>reference</th><th>flag</th>"
                     "<th title='share of the summed absolute attributions of the labs; + supports the prediction'>"
                     "attribution</th><th></th></tr>")
        total = sum(abs(r.score) for r in rows if r.value is not None) or 1.0
        for r in rows:
            if r.value is None:
                parts.append(f"<tr><td>{html.escape(r.label)}</td><td>not measured</td>"
                             f"<td>{html.escape(r.reference)}</td><td></td><td>–</td><td></td></tr>")
                continue
            parts.append(f"<tr><td>{html.escape(r.label)}</td><td>{r.value:.4g} {html.escape(r.unit)}</td>"
                         f"<td>{html.escape(r.reference)}</td><td>{r.flag}</td><td>{r.score / total:+.0%}</td>"
                         f"<td>{_bar(r.score, scale)}</td></tr>")
        parts.append("</table>")
    parts.append(f"<p style='color:#666'>{html.escape(DISCLAIMER)}</p></body></html>")
    return "".join(parts)
