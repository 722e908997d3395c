"""Image attributions with Captum, at the model's own resolution.

The image encoder reads a frozen EfficientNet map (a cell per 16 pixels by default, see
core/model/backbones.py) and its trainable head keeps each cell's evidence apart until it pools them.
The attributions are therefore computed on that map, one value per cell, from the map of a blurred copy
of the image (the baseline): that is the resolution at which the model can tell places apart, and it is
what the heatmap shows (upsampled smoothly to the model's input for drawing, `resolution` says by how
much). For a ViT, which reads pixels, they are computed on the pixels.

Methods: Integrated Gradients (steps chosen per case until complete, core/explain/ig.py), gradient ×
(input − baseline), Grad-CAM on the map, KernelSHAP with cells (ViT: 16-pixel patches) as features.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
import torch
from captum.attr import KernelShap
from PIL import Image
from scipy import ndimage

from core.explain.graph import CaseGraph
from core.model.backbones import image_map_shape

IMAGE_METHODS = ("integrated_gradients", "grad_cam", "gradient_x_input", "kernel_shap")
SHAP_PATCH = 16  # pixel models: KernelSHAP features are patches of 16×16 model pixels
BATCH = 16  # IG path points per forward/backward pass


def _inputs(graph: CaseGraph, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the image encoder reads for the image and for its blurred copy (the baseline)."""
    pixels = graph.image_pixels(name)
    base = blurred(pixels)
    if graph.reads_pixels(name):
        return pixels, base
    with torch.no_grad():
        backbone = graph.image_backbone()
        return backbone(pixels), backbone(base)


def resolution(graph: CaseGraph, name: str) -> int:
    """Cells per side of the image's attribution map (the model's effective resolution)."""
    mc = graph.model.config.model
    if graph.reads_pixels(name):
        return mc.image_size
    return image_map_shape(mc.image_features, mc.image_size)[1]  # known from the config: no backbone pass


class ImageMap(NamedTuple):
    heat: np.ndarray  # (S, S) signed attribution, upsampled from the model's cells to its input
    relative_error: float  # IG: |Σ attributions − (f(x) − f(baseline))| / |f(x) − f(baseline)|; 0 otherwise
    steps: int  # IG steps used (0 for other methods)
    through_synthesis: float = 0.0  # IG: the share that went through the synthesized samples (graph.integrate)


def image_attribution(graph: CaseGraph, name: str, method: str = "integrated_gradients", steps: int | None = None,
                      target: int | None = None, seed: int | None = None) -> ImageMap:
    """The image's attribution for the target class. `steps` fixes the IG step count (default: grown per
    case until the relative completeness error is ≤ 5 %); `seed` seeds KernelSHAP (default: the case id's)."""
    target = graph.target if target is None else target
    x, base = _inputs(graph, name)
    size = graph.image_pixels(name).shape[-1]

    def f(inp: torch.Tensor) -> torch.Tensor:
        return graph.objective(graph.probs_from_image_map(name, inp), target)

    delta, used, through = 0.0, 0, 0.0
    if method == "integrated_gradients":
        res = graph.integrate(graph.index(name), graph.model.encoders[name], x, base, target,
                              schedule=(steps,) if steps else (16, 32, 64, 128), internal_batch_size=BATCH)
        delta, used, through = res.relative_error, res.steps, res.through_synthesis
        cells = res.attributions[0].sum(0)
    elif method == "gradient_x_input":
        inp = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(inp).sum(), inp)
        cells = ((x - base) * grad)[0].sum(0)
    elif method == "grad_cam":
        if graph.reads_pixels(name):
            raise ValueError("Grad-CAM needs a feature map; this model reads pixels with a ViT")
        inp = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(inp).sum(), inp)
        cells = torch.relu((grad.mean((2, 3), keepdim=True) * x).sum(1))[0]
    elif method == "kernel_shap":
        cells = _kernel_shap(graph, name, f, x, base, zlib.crc32(graph.case.case_id.encode()) if seed is None else seed)
    else:
        raise ValueError(f"unknown image method {method!r}; use one of {IMAGE_METHODS}")
    return ImageMap(upsample(cells.detach().cpu().numpy(), size), delta, used, through)


def _kernel_shap(graph: CaseGraph, name: str, f, x: torch.Tensor, base: torch.Tensor, seed: int) -> torch.Tensor:
    """KernelSHAP values per cell (per 16-pixel patch for pixel models), seeded: the same case always gives
    the same map. Samples: 2 per feature plus 64, so the regression is well determined."""
    side = x.shape[-1]
    patch = SHAP_PATCH if graph.reads_pixels(name) else 1
    g = side // patch
    grid = torch.arange(g * g, device=x.device).view(g, g)
    mask = grid.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[None, None].expand(1, x.shape[1], side, side)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        attr = KernelShap(f).attribute(x, baselines=base, feature_mask=mask, n_samples=2 * g * g + 64,
                                       perturbations_per_eval=32)
    # every channel (and pixel of a patch) carries its feature's value: keep one per cell
    return attr[0, 0, ::patch, ::patch]


def upsample(cells: np.ndarray, size: int) -> np.ndarray:
    """A (g, g) cell map → (size, size), bilinear between cell centres (what the heatmap draws)."""
    if cells.shape[0] == size:
        return cells.astype(np.float32)
    img = Image.fromarray(cells.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img) * (cells.shape[0] / size) ** 2  # the same total as the cells


def blurred(pixels: torch.Tensor) -> torch.Tensor:
    """The attribution baseline: the image with its detail removed (a Gaussian blur of 1/16 of its side).
    The path from it stays among plausible images, which keeps the integral well behaved (unlike black)."""
    sigma = pixels.shape[-1] / 16
    arr = ndimage.gaussian_filter(pixels.detach().cpu().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest")
    return torch.as_tensor(arr, device=pixels.device)


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _span_fill(mask: np.ndarray) -> np.ndarray:
    """Each row filled from its first to its last True pixel."""
    idx = np.arange(mask.shape[1])
    first = np.where(mask.any(1), np.argmax(mask, 1), mask.shape[1])
    last = np.where(mask.any(1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], 1), -1)
    return (idx[None] >= first[:, None]) & (idx[None] <= last[:, None])


def field_of_view(pixels: np.ndarray) -> np.ndarray:
    """Where the body is in a (S, S) model input: the largest region clearly brighter than the background
    (halfway between the darkest pixels and Otsu's split of a smoothed copy), filled across rows and columns (the air of the lungs and a pneumothorax lie inside the
    body but are as dark as the background), grown by 2 % of the side. Heatmaps are drawn only there:
    evidence in the air around the patient or in the padding is not shown."""
    size = pixels.shape[-1]
    smooth = ndimage.gaussian_filter(pixels.astype(np.float32), size / 64)
    floor = float(np.percentile(smooth, 2))  # the air around the patient
    body = smooth > (floor + _otsu(smooth)) / 2  # halfway to Otsu's split: soft tissue counts as body
    labels, n = ndimage.label(body)
    if n == 0:
        return np.ones_like(body)
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    filled = _span_fill(largest) & _span_fill(largest.T).T
    fov = ndimage.binary_dilation(filled, iterations=max(1, size // 50))
    return fov if fov.mean() > 0.2 else np.ones_like(body)  # a failed segmentation hides nothing


def to_scan(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map on the model's square input → the scan's (H, W), undoing the aspect-preserving padding."""
    size = heat.shape[0]
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    crop = heat[top:top + nh, left:left + nw].astype(np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((w, h), Image.Resampling.BILINEAR))
