"""A fresh, non-editable install: `pip install <checkout>` into a new virtual environment, then
every console script's --help and the main job from a directory outside the checkout.

Slow (it builds a wheel and runs the main job on SmolLM2). The new environment gets the
project's dependencies from the test's own environment (a .pth file) and installs only the
project itself, so the wheel's contents are what is tested: its packages, package data, console
scripts and license, and no import of the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("prefill", "convert", "calibrate", "evaluate", "bench")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin directory, environment variables) of a new venv holding a wheel of the checkout."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies (jax, flax, ...) come from this environment; the project does not.
    (Path(site) / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
        check=True,
        cwd=tmp_path_factory.mktemp("build"),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    return env_dir / "bin", env


def test_every_console_script_has_help(installed, tmp_path):
    bin_dir, env = installed
    for command in COMMANDS:
        result = subprocess.run(
            [bin_dir / f"sharedsparse-{command}", "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert f"usage: sharedsparse-{command}" in result.stdout
        assert "--checkpoint" in result.stdout or command == "bench"


def test_the_wheel_holds_the_packages_not_the_checkout(installed, tmp_path):
    bin_dir, env = installed
    code = (
        "import importlib.metadata as m, sharedsparse_cli, models, sharedsparse_jax.tables as t;"
        "print(sharedsparse_cli.__file__); print(t.table_path('smollm2-135m-instruct'));"
        "print(m.metadata('sharedsparse-jax')['License-Expression']);"
        "print(any(f.name == 'LICENSE' for f in m.files('sharedsparse-jax')));"
        "import importlib.util as u; print(u.find_spec('benchmarks'), u.find_spec('tests'))"
    )
    result = subprocess.run(
        [bin_dir / "python", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    module, table, license_expression, has_license, others = result.stdout.splitlines()
    assert not module.startswith(str(ROOT)) and "site-packages" in module
    assert Path(table).is_file() and not table.startswith(str(ROOT))
    assert license_expression == "Apache-2.0" and has_license == "True"
    assert others == "None None"


def test_bench_outside_a_checkout_says_so(installed, tmp_path):
    bin_dir, env = installed
    result = subprocess.run(
        [bin_dir / "sharedsparse-bench", "attention"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2
    assert "is not inside a sharedsparse-jax checkout" in result.stderr


def test_the_main_job_runs_outside_the_checkout(installed, tmp_path):
    bin_dir, env = installed
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [
            bin_dir / "sharedsparse-prefill",
            "--context-tokens", "1200", "--max-new-tokens", "4", "--out-dir", str(out_dir),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shareprefill answer:" in result.stdout and "dense answer:" in result.stdout
    assert (out_dir / "prefill.json").is_file()
