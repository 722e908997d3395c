"""Where and with which code a result was made: what a result file records beside its figures."""

from __future__ import annotations

import os
import platform
import subprocess

import torch

from core.paths import ROOT


def code_commit() -> str | None:
    """The commit of the code a result was made with ("+changes" when the work tree differed from it), so that
    a table can say which code it belongs to; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


def machine() -> dict[str, str]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": str(os.cpu_count()), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
