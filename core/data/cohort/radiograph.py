"""A chest-radiograph-like image with anatomy, findings, distractors and acquisition variation.

Drawn in canonical coordinates (x, y in [-1, 1], y downwards, the patient's right on the image's left,
as a PA film is read), then moved by the acquisition (rotation, scale, shift, exposure, blur, noise).
Every finding's pixels are returned as a mask moved by the same transform, so explanations can be
scored against where the finding really is.

Everything is computed in float64 and quantized once at the end. In float32, numpy's exp, sin and log
return results that differ in the last bit between SIMD levels (X86_V4, X86_V3, baseline, ARM), and that
was enough to move one uint8 pixel in about one image in 200 between machines (issue 23); in float64 a
last-bit difference would have to land within ~1e-13 of a rounding or threshold boundary to show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Sides as the patient has them; on the image the patient's right lung is on the left.
LUNG_CENTRE = {"right": (-0.40, -0.08), "left": (0.40, -0.06)}
LUNG_RADII = {"right": (0.30, 0.66), "left": (0.28, 0.64)}
DOME_BASE = {"right": 0.47, "left": 0.52}


@dataclass
class Acquisition:
    portable: bool  # AP film of a sicker patient: magnified heart, shallow inspiration, more noise
    rotation_deg: float
    scale: float
    shift: tuple[float, float]
    gamma: float
    contrast: float
    brightness: float
    blur: float
    noise: float
    marker_left: bool

    @classmethod
    def sample(cls, rng: np.random.Generator, portable: bool) -> "Acquisition":
        return cls(portable=portable, rotation_deg=float(rng.normal(0, 4 if portable else 2)),
                   scale=float(rng.uniform(0.9, 1.06)), shift=(float(rng.normal(0, 0.03)), float(rng.normal(0, 0.03))),
                   gamma=float(rng.uniform(0.75, 1.35)), contrast=float(rng.uniform(0.85, 1.15)),
                   brightness=float(rng.normal(0, 0.04)), blur=float(rng.uniform(0.4, 1.2)),
                   noise=float(rng.uniform(0.015, 0.05) if portable else rng.uniform(0.008, 0.03)),
                   marker_left=bool(rng.random() < 0.5))


class Canvas:
    """Coordinate grids and the shapes every drawing step needs."""

    def __init__(self, size: int):
        self.size = size
        lin = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
        self.y, self.x = np.meshgrid(lin, lin, indexing="ij")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def dist(self, cx: float, cy: float) -> np.ndarray:
        return np.sqrt((self.x - cx) ** 2 + (self.y - cy) ** 2)

    def noise(self, rng: np.random.Generator, sigma_px: float) -> np.ndarray:
        n = ndimage.gaussian_filter(rng.standard_normal((self.size, self.size)), sigma_px)
        return n / (n.std() + 1e-6)

    def soften(self, mask: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
        return ndimage.gaussian_filter(mask.astype(np.float64), sigma_px)


def lung_mask(c: Canvas, side: str, inspiration: float) -> np.ndarray:
    cx, cy = LUNG_CENTRE[side]
    rx, ry = LUNG_RADII[side]
    lateral = np.clip(np.abs(c.x - cx) / rx, 0, 1)
    dome = DOME_BASE[side] - inspiration - 0.18 * (1 - lateral ** 2) * (1 if side == "right" else 0.85)
    return c.ellipse(cx, cy, rx, ry) & (c.y < dome)


def draw_radiograph(rng: np.random.Generator, size: int, findings: dict[str, dict], acq: Acquisition,
                    distractors: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Returns (uint8 image, {finding: bool mask}). `findings` maps a finding to its parameters
    (side, severity in [0, 1], zone), as decided by the case sampler so that the note can agree."""
    c = Canvas(size)
    px = size / 2  # pixels per canonical unit
    inspiration = 0.1 if acq.portable else 0.0
    img = np.full((size, size), 0.04)
    thorax = c.ellipse(0.0, 0.05, 0.86, 0.98)
    img[thorax] = 0.42
    lungs = {s: lung_mask(c, s, inspiration) for s in ("right", "left")}
    both = lungs["right"] | lungs["left"]
    hila = np.minimum(c.dist(-0.2, -0.02), c.dist(0.22, 0.0))
    vessels = 0.05 * np.clip(c.noise(rng, 1.3), -2, 2) * np.exp(-hila / 0.45) + 0.05 * np.exp(-hila / 0.25)
    img = np.where(both, 0.13 + vessels, img)
    masks: dict[str, np.ndarray] = {}

    # mediastinum and spine
    med_half = np.full_like(c.x, 0.11)
    if "widened_mediastinum" in findings:
        s = findings["widened_mediastinum"]["severity"]
        bump = (0.08 + 0.12 * s) * np.exp(-((c.y + 0.3) / 0.3) ** 2)
        masks["widened_mediastinum"] = (np.abs(c.x - 0.02) < med_half + bump) & (np.abs(c.x - 0.02) >= med_half) \
            & (c.y > -0.75) & (c.y < 0.15)
        med_half = med_half + bump
    mediastinum = (np.abs(c.x - 0.02) < med_half) & (c.y > -0.9) & (c.y < 0.35)
    img = np.where(mediastinum, 0.62, img)
    vert = 0.05 * (np.sin(c.y * np.pi * 9) > 0.6)
    img = np.where(np.abs(c.x) < 0.055, np.maximum(img, 0.66 + vert), img)
    img = np.where((np.abs(c.x - 0.01) < 0.035) & (c.y < -0.4), 0.3, img)  # trachea (air)

    # heart
    heart_scale = 1.12 if acq.portable else 1.0
    hx, hy, hrx, hry = 0.12, 0.27, 0.29 * heart_scale, 0.22 * heart_scale
    if "cardiomegaly" in findings:
        s = findings["cardiomegaly"]["severity"]
        hrx *= 1.3 + 0.3 * s
        hry *= 1.12
        hx += 0.05
        masks["cardiomegaly"] = c.ellipse(hx, hy, hrx, hry) & thorax
    heart = c.ellipse(hx, hy, hrx, hry)
    img = np.where(heart, np.maximum(img, 0.58), img)

    # ribs and clavicles
    ribs = np.zeros_like(img)
    for side, sign in (("right", -1), ("left", 1)):
        for k in range(8):
            y0 = -0.72 + k * 0.17 + rng.normal(0, 0.01)
            curve = y0 + 0.35 * (c.x - sign * 0.1) ** 2 * sign * sign - 0.1 * np.abs(c.x)
            band = (np.abs(c.y - curve) < 0.022) & (sign * c.x > 0.08) & (sign * c.x < 0.85)
            ribs += band
        clav = (np.abs(c.y - (-0.72 + 0.25 * (sign * c.x - 0.1))) < 0.03) & (sign * c.x > 0.08) & (sign * c.x < 0.6)
        ribs += 1.3 * clav
    img += 0.1 * np.clip(ribs, 0, 1.5) * thorax

    # the findings draw from a stream of their own, taken whatever the findings are, so that the same call without
    # findings renders the very same film without them (the faithfulness baseline that removes the finding)
    frng = np.random.default_rng(int(rng.integers(2**62)))
    for name, f in findings.items():
        side, s = f.get("side", "right"), f["severity"]
        lung = lungs[side]
        if name == "consolidation":
            cx, cy = LUNG_CENTRE[side]
            zone_y = {"upper": -0.45, "middle": 0.0, "lower": 0.3}[f.get("zone", "lower")]
            centre = (cx + frng.normal(0, 0.05), zone_y + frng.normal(0, 0.05))
            radius = 0.12 + 0.12 * s
            blob = (c.dist(*centre) / radius + 0.35 * c.noise(frng, 2.5)) < 1.0
            region = blob & lung
            if region.sum() < 4:
                region = (c.dist(*centre) < radius) & lung
            masks[name] = region
            img += (0.2 + 0.2 * s) * c.soften(region, 1.2) * (1 + 0.15 * c.noise(frng, 0.8))
        elif name == "cavity":
            cx, _ = LUNG_CENTRE[side]
            centre = (cx + frng.normal(0, 0.05), -0.42 + frng.normal(0, 0.05))
            r_out = 0.07 + 0.06 * s
            d = c.dist(*centre)
            wall = (d < r_out) & (d >= r_out * 0.55)
            lumen = d < r_out * 0.55
            infiltrate = (d < r_out * 1.9) & (c.noise(frng, 1.5) > 0.3) & lung
            masks[name] = ((d < r_out) | infiltrate) & lung
            img += 0.12 * c.soften(infiltrate, 1.0)
            img += 0.32 * c.soften(wall & lung, 0.7)
            img = np.where(lumen & lung, 0.1, img)
        elif name == "pleural_effusion":
            for sd in (("right", "left") if f.get("bilateral") else (side,)):
                cx, _ = LUNG_CENTRE[sd]
                rx = LUNG_RADII[sd][0]
                lateral = np.clip(np.abs(c.x - cx) / rx, 0, 1)
                level = DOME_BASE[sd] - inspiration - (0.08 + 0.3 * s) - 0.1 * lateral  # meniscus: higher laterally
                region = lungs[sd] & (c.y > level)
                masks[name] = masks.get(name, np.zeros_like(region)) | region
                img = np.where(region, np.maximum(img, 0.5), img)
        elif name == "pulmonary_edema":
            haze = 0.1 + 0.12 * s
            img += haze * np.exp(-hila / 0.35) * both
            kerley = np.zeros_like(img, dtype=bool)
            for sd in ("right", "left"):
                cx, _ = LUNG_CENTRE[sd]
                for k in range(4):
                    ky = 0.2 + 0.06 * k + frng.normal(0, 0.01)
                    kerley |= (np.abs(c.y - ky) < 0.008) & (np.abs(c.x - cx) > 0.18) & (np.abs(c.x - cx) < 0.29)
            kerley &= both
            img += 0.12 * kerley
            masks[name] = ((np.exp(-hila / 0.35) > 0.45) | kerley) & both
        elif name == "pneumothorax":
            cx, cy = LUNG_CENTRE[side]
            rx, ry = LUNG_RADII[side]
            k = 1 - (0.18 + 0.35 * s)
            shrunk = c.ellipse(cx + (0.1 if side == "right" else -0.1) * (1 - k), cy + 0.25 * (1 - k), rx * k, ry * k)
            region = lung & ~shrunk
            line = region & ndimage.binary_dilation(shrunk, iterations=1) & ~shrunk
            masks[name] = region
            img = np.where(region, 0.07, img)
            img += 0.22 * line
        elif name == "wedge_opacity":
            cx, _ = LUNG_CENTRE[side]
            lateral_x = cx + (-1 if side == "right" else 1) * 0.22
            region = (c.dist(lateral_x, 0.3) < 0.06 + 0.04 * s) & lung
            masks[name] = region
            img += 0.25 * c.soften(region, 0.8)

    if distractors:
        if rng.random() < 0.25:  # nipple shadows: round, symmetric, not disease
            for sx in (-0.45, 0.45):
                img += 0.08 * c.soften(c.dist(sx + rng.normal(0, 0.02), 0.33) < 0.035, 0.8)
        if rng.random() < 0.15:  # an old calcified granuloma
            side = "right" if rng.random() < 0.5 else "left"
            cx, _ = LUNG_CENTRE[side]
            img += 0.3 * (c.dist(cx + rng.normal(0, 0.1), rng.uniform(-0.4, 0.2)) < 0.018)
        if acq.portable and rng.random() < 0.7:  # ECG leads on a portable film
            for _ in range(3):
                img += 0.35 * (np.abs(c.dist(rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.5)) - 0.035) < 0.012)

    # side marker in a corner, outside the body
    mx = -0.85 if acq.marker_left else 0.85
    img = np.where((np.abs(c.x - mx) < 0.05) & (np.abs(c.y + 0.88) < 0.06), 0.95, img)

    # acquisition: one affine for the image and every mask
    theta = np.deg2rad(acq.rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / acq.scale
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5])
    offset = centre - rot @ centre - np.array(acq.shift) * px

    def move(a: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(a.astype(np.float64), rot, offset=offset, order=order, mode="nearest" if order else "constant")

    img = move(img, 1)
    masks = {k: move(m, 0) > 0.5 for k, m in masks.items()}
    img = ndimage.gaussian_filter(img, acq.blur)
    img = np.clip(img, 0, 1) ** acq.gamma
    img = np.clip((img - 0.5) * acq.contrast + 0.5 + acq.brightness, 0, 1)
    img = img + rng.normal(0, acq.noise, img.shape) + acq.noise * 0.7 * c.noise(rng, 0.7)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), masks
