"""The Hugging Face oracle: transformers + CPU torch in their own Python 3.11 environment.

PyTorch only exists here as a test oracle, and its CPU wheel is only available for Python 3.11,
so the project's 3.12 tests never import it. Instead `oracle_python()` builds (once, under a
file lock, in the cache directory) a 3.11 virtual environment, and `oracle_results()` runs
`hf_oracle.py` there; the oracle writes arrays to .npz files that the tests compare against.
Results are cached under a key that covers the oracle script, the pinned requirements and the
request, so a second run of the suite does not start torch at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from models.cache import cache_lock, cache_root

ORACLE_REQUIREMENTS = (
    "torch==2.13.0",
    "transformers==5.24.0",
    "accelerate==1.15.0",
    "gguf==0.19.0",
    "safetensors",
    "numpy",
)
ORACLE_SCRIPT = Path(__file__).with_name("hf_oracle.py")


class OracleUnavailable(RuntimeError):
    """No Python 3.11 interpreter to build the oracle environment with."""


def find_python311() -> str:
    """Path of a Python 3.11 interpreter (PATH first, then pyenv)."""
    candidates = [shutil.which("python3.11"), shutil.which("python3")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted(pyenv_root.glob("versions/3.11*/bin/python3.11"))]
    for candidate in candidates:
        if not candidate:
            continue
        check = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 11)"],
            capture_output=True,
            check=False,
        )
        if check.returncode == 0:
            return candidate
    raise OracleUnavailable("no Python 3.11 interpreter found for the transformers oracle")


def _environment_key() -> str:
    return hashlib.sha256("\n".join(ORACLE_REQUIREMENTS).encode()).hexdigest()[:12]


def oracle_python() -> Path:
    """The oracle environment's interpreter, creating the environment on first use."""
    env_dir = cache_root() / "oracle-env" / f"py311-{_environment_key()}"
    python = env_dir / "bin" / "python"
    with cache_lock("oracle-env"):
        if (env_dir / ".complete").is_file():
            return python
        if env_dir.exists():
            shutil.rmtree(env_dir)
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        _run([find_python311(), "-m", "venv", str(env_dir)], "creating the oracle venv")
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *ORACLE_REQUIREMENTS,
            ],
            "installing the oracle requirements",
        )
        (env_dir / ".complete").write_text("\n".join(ORACLE_REQUIREMENTS) + "\n")
    return python


def oracle_results(task: str, request: dict[str, Any]) -> Path:
    """Runs one oracle task (cached) and returns the directory holding its outputs.

    Args:
      task: a task name understood by hf_oracle.py ("tiny_models", "gguf_reference").
      request: the task's JSON-serialisable parameters.

    Returns:
      Directory with the task's output files.
    """
    payload = json.dumps({"task": task, "request": request}, sort_keys=True)
    key = hashlib.sha256(
        ORACLE_SCRIPT.read_bytes() + payload.encode() + _environment_key().encode()
    ).hexdigest()[:16]
    out_dir = cache_root() / "oracle-results" / f"{task}-{key}"
    if (out_dir / ".complete").is_file():
        return out_dir
    python = oracle_python()
    with cache_lock(f"oracle-{task}-{key}"):
        if (out_dir / ".complete").is_file():
            return out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        (staging / "request.json").write_text(payload)
        _run(
            [str(python), str(ORACLE_SCRIPT), str(staging / "request.json"), str(staging)],
            f"running the oracle task {task!r}",
        )
        (staging / ".complete").write_text("ok\n")
        staging.rename(out_dir)
    return out_dir


def _run(command: list[str], what: str) -> None:
    # The oracle must not inherit the tests' JAX / XLA settings or this venv.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
            f"stdout tail:\n{result.stdout[-3000:]}\nstderr tail:\n{result.stderr[-3000:]}"
        )


if __name__ == "__main__":  # python -m tests.oracle.hf_env: build the environment ahead of time
    print(oracle_python(), file=sys.stderr)
