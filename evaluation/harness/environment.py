"""Where and from what code numbers were taken: hardware, software, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import jax

__all__ = ["environment"]

# Paths whose uncommitted changes would change the numbers.
CODE_PATHS = ("pallas_kernels", "sharedsparse_jax", "models", "evaluation")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.rstrip()  # porcelain lines start with a space: keep it


def environment() -> dict[str, Any]:
    """Hardware, software and code state of this process.

    Returns:
      {"platform", "device_kind", "device_count", "cpu", "cpu_count", "jax", "python",
      "commit", "dirty" (changed or untracked files under the code paths), "date"}.
      $SHAREDSPARSE_COMMIT names the commit of a tree copied without its git state (to a GPU
      machine, say): git there describes some other commit, so the tree is recorded as that
      commit without local changes.
    """
    device = jax.devices()[0]
    given_commit = os.environ.get("SHAREDSPARSE_COMMIT")
    status = None if given_commit else _git("status", "--porcelain", "--", *CODE_PATHS)
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "commit": given_commit or _git("rev-parse", "HEAD"),
        "dirty": sorted(line[3:] for line in status.splitlines()) if status else [],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
