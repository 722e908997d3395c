"""One device policy for prediction, explanation, training and evaluation.

- Device: CUDA when present, else the CPU (`pick_device`); `--device` overrides.
- Precision: the frozen pretrained backbones (EfficientNet-Lite0, MiniLM) run under bf16 autocast on CUDA
  (`backbone_autocast`); everything trained (heads, fusion, denoiser, classifier) runs in float32 on every
  device, with TF32 matrix products on CUDA. Prediction and explanation read the same backbone features
  and the same float32 model, so the class an explanation explains is the class the prediction shows.
- Random draws come from CPU generators and are moved to the device, so a seed gives the same stream on
  every device.
"""

from __future__ import annotations

import contextlib

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            from core.errors import RobustMDiffError

            raise RobustMDiffError("--device cuda was asked for, but torch sees no CUDA device on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters live."""
    return next(model.parameters()).device


def backbone_autocast(device: str | torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the frozen backbones on CUDA; nothing on the CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return contextlib.nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

