"""Image attributions with Captum: Integrated Gradients on pixels, Grad-CAM on the backbone's last
feature map, gradient × input. Maps come back at the model's input size and can be resized to the
scan's own resolution (`to_scan`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from captum.attr import IntegratedGradients, InputXGradient, LayerAttribution, LayerGradCam
from PIL import Image

from core.explain.graph import CaseGraph
from core.model.backbones import ImageBackbone

IMAGE_METHODS = ("integrated_gradients", "grad_cam", "gradient_x_input")
# IG steps chosen by measurement (`python -m core bench --ig-steps`, BENCHMARKS.md): completeness error
# under 10 % while a full explanation stays within 2 s on a 2-core CPU.
IMAGE_STEPS = 64
BATCH = 16  # IG path points per forward/backward pass: larger batches slow down on a 2-core CPU (cache)


def image_attribution(graph: CaseGraph, name: str, method: str = "integrated_gradients", steps: int = IMAGE_STEPS,
                      target: int | None = None) -> tuple[np.ndarray, float]:
    """(S, S) signed attribution for the target class and the IG completeness error (0 for other methods)."""
    target = graph.target if target is None else target
    pixels = graph.image_pixels(name)

    def f(px: torch.Tensor) -> torch.Tensor:
        return graph.objective(graph.probs_from_image(name, px), target)

    if method == "integrated_gradients":
        ig = IntegratedGradients(f)
        attr, delta = ig.attribute(pixels, baselines=blurred(pixels), n_steps=steps,
                                   method="gausslegendre", internal_batch_size=min(steps, BATCH), return_convergence_delta=True)
        return attr[0, 0].detach().cpu().numpy(), float(delta.abs().max())
    if method == "gradient_x_input":
        attr = InputXGradient(f).attribute(pixels.clone().requires_grad_(True))
        return attr[0, 0].detach().cpu().numpy(), 0.0
    if method == "grad_cam":
        enc = graph.model.encoders[name]
        if getattr(enc, "input_kind", "") == "pixels":
            raise ValueError("Grad-CAM needs the EfficientNet backbone; this model reads pixels with a ViT")
        backbone = ImageBackbone(graph.device)
        cam = LayerGradCam(f, backbone.net._conv_head)
        attr = cam.attribute(pixels, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, pixels.shape[-2:], interpolate_mode="bilinear")
        return up[0, 0].detach().cpu().numpy(), 0.0
    raise ValueError(f"unknown image method {method!r}; use one of {IMAGE_METHODS}")


def blurred(pixels: torch.Tensor) -> torch.Tensor:
    """The IG baseline: the image with its detail removed (a Gaussian blur of 1/16 of its side). The path
    from it stays among plausible images, which keeps the integral well behaved (unlike a black image)."""
    sigma = pixels.shape[-1] / 16
    arr = ndimage.gaussian_filter(pixels.detach().cpu().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest")
    return torch.as_tensor(arr, device=pixels.device)


def to_scan(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map on the model's square input → the scan's (H, W), undoing the aspect-preserving padding."""
    size = heat.shape[0]
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    crop = heat[top:top + nh, left:left + nw].astype(np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((w, h), Image.Resampling.BILINEAR))
