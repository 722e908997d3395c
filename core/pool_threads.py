"""How the app's model workers use the machine's threads, and whether the server warms the model up.

Torch's intra-op threads oversubscribe a small machine (issue 15: two sessions explaining at once with torch's
default threads ran 15x slower than with one thread each), so the pool (core/serve.py) runs one worker per core
(RMD_WORKERS to change it), each on one torch thread; this module holds that policy, the model stack's imports
done once before any worker starts, and the warm-up switch (RMD_WARM_UP).
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """RMD_WORKERS, else one worker per core (at most 4: beyond that requests are rarely concurrent)."""
    env = os.environ.get("RMD_WORKERS", "").strip()
    if env:
        return max(1, int(env))
    return max(1, min(4, available_cores()))


def warm_up_enabled() -> bool:
    """Warm the model up in the background when the server starts (RMD_WARM_UP=0: not, e.g. in tests)."""
    return os.environ.get("RMD_WARM_UP", "1") != "0"


def import_model_stack() -> None:
    """Import what model work imports lazily, in this thread, before any worker starts: transformers'
    lazy modules are not safe to import from two threads at once (a worker's first prediction and the
    warm-up failed with "cannot import name 'AutoModel'")."""
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    import core.explain.explanation  # noqa: F401 - captum, shap and the explainers


def one_thread() -> None:
    """Run this thread's torch work on one intra-op thread (the setting is per thread)."""
    import torch

    torch.set_num_threads(1)


@contextmanager
def single_threaded():
    """One torch thread for the work inside, then this thread's own setting again."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
