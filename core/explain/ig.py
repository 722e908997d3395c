"""Integrated Gradients with the number of steps chosen per case, until the attributions are complete.

IG's completeness axiom says the attributions sum to f(x) − f(baseline). With a finite number of path
points the sum is off by the quadrature error; how many points a case needs depends on how curved the
model is along its path, so one fixed step count is too few for some cases and wasted on others.
`integrated_gradients` runs Captum's IntegratedGradients (Gauss–Legendre nodes) with a growing number of
steps (16 → 32 → 64 → 128 → 256) and stops at the first whose relative completeness error

    |Σ attributions − (f(x) − f(baseline))| / max(|f(x) − f(baseline)|, floor)

is at most `tolerance` (5 %), or when the step cap or the optional time budget is reached; the error of
the attributions it returns is reported either way. Generic: `f` is any callable from a batch of inputs
(one tensor or a tuple) to one scalar per example, so image, note and labs share it.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import torch
from captum.attr import IntegratedGradients

SCHEDULE = (16, 32, 64, 128, 256)
TOLERANCE = 0.05
# Below this |f(x) − f(baseline)| (in units of f: for log p, 0.01 nats, a 1 % relative change of p) the
# error is measured against the floor, so a near-zero total does not make the ratio explode.
FLOOR = 1e-2

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


class IGResult(NamedTuple):
    attributions: Inputs  # same structure and shapes as the inputs
    relative_error: float  # the largest over the batch
    steps: int
    # the share |samples' part| / (|inputs' part| + |samples' part|) of the attributions that went through the
    # synthesized samples (core/explain/graph.py integrate); 0 when nothing is synthesized
    through_synthesis: float = 0.0


def _tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def relative_error(attributions: Inputs, total: torch.Tensor, floor: float = FLOOR) -> float:
    """The largest over the batch of |Σ attributions − total| / max(|total|, floor); `total` (B,)."""
    summed = sum(a.detach().reshape(a.shape[0], -1).sum(1) for a in _tuple(attributions))
    err = (summed - total).abs() / total.abs().clamp_min(floor)
    return float(err.max())


def integrated_gradients(f: Callable[..., torch.Tensor], inputs: Inputs, baselines: Inputs, *,
                         schedule: tuple[int, ...] = SCHEDULE, tolerance: float = TOLERANCE, floor: float = FLOOR,
                         max_seconds: float | None = None, internal_batch_size: int | None = None,
                         additional_forward_args=None) -> IGResult:
    """IG attributions of `f` at `inputs` from `baselines`, with the fewest steps of `schedule` that make the
    relative completeness error ≤ `tolerance`. `max_seconds` (optional) stops growing the step count when the
    next round (estimated as the last one scaled by its step count) would end past the budget; without it
    the result depends only on the inputs. `internal_batch_size`: path points per forward/backward pass
    (default: all of them up to 32)."""
    if not schedule:
        raise ValueError("schedule must hold at least one step count")
    extra = () if additional_forward_args is None else (
        additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,))
    with torch.no_grad():
        total = (f(*_tuple(inputs), *extra) - f(*_tuple(baselines), *extra)).detach().reshape(-1)
    ig = IntegratedGradients(f)
    t0 = time.perf_counter()
    best: IGResult | None = None
    last_steps, last_seconds = 0, 0.0
    for steps in schedule:
        if best is not None and max_seconds is not None:
            estimate = last_seconds * steps / max(last_steps, 1)
            if time.perf_counter() - t0 + estimate > max_seconds:
                break
        t = time.perf_counter()
        attr = ig.attribute(inputs, baselines=baselines, n_steps=steps, method="gausslegendre",
                            additional_forward_args=additional_forward_args,
                            internal_batch_size=internal_batch_size or min(steps, 32))
        last_steps, last_seconds = steps, time.perf_counter() - t
        err = relative_error(attr, total, floor)
        if best is None or err <= best.relative_error:
            best = IGResult(attr, err, steps)
        if err <= tolerance:
            break
    assert best is not None
    return best
