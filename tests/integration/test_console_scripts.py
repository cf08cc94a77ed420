"""The console scripts: each one's parser gives help for every option, uses the shared
vocabulary, and `sharedsparse-bench` runs the benchmarks of a checkout, and only there."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from sharedsparse_cli import bench, calibrate, convert, evaluate, prefill

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "prefill": prefill,
    "convert": convert,
    "calibrate": calibrate,
    "evaluate": evaluate,
    "bench": bench,
}


def test_pyproject_names_one_console_script_per_task():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {f"sharedsparse-{name}" for name in MODULES}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert module == f"sharedsparse_cli.{name.removeprefix('sharedsparse-')}"
        assert callable(getattr(MODULES[name.removeprefix("sharedsparse-")], function))


@pytest.mark.parametrize("name", MODULES)
def test_every_option_has_help(name):
    parser = MODULES[name].build_parser()
    assert parser.prog == f"sharedsparse-{name}"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"sharedsparse-{name} {action.option_strings or action.dest}"
    options = {o for action in parser._actions for o in action.option_strings}
    # One vocabulary: no command spells the model, the methods or the outputs another way.
    assert not options & {"--model", "--models", "--methods", "--results-dir", "--json"}
    if name != "bench":
        assert {"--checkpoint", "--out-dir"} <= options


def test_bench_finds_the_checkout_and_refuses_elsewhere(tmp_path, capsys, monkeypatch):
    assert bench.find_checkout(ROOT / "benchmarks" / "results") == ROOT
    assert bench.find_checkout(tmp_path) is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        bench.main(["attention"])
    assert exited.value.code == 2
    assert "is not inside a sharedsparse-jax checkout" in capsys.readouterr().err
    for name in bench.BENCHMARKS:  # every listed benchmark is a module of the checkout
        assert (ROOT / "benchmarks" / f"{name.replace('.', '/')}.py").is_file(), name


def test_bench_runs_a_benchmark_of_the_checkout(tmp_path):
    out = tmp_path / "model.json"
    code = bench.main(
        [
            "--checkout", str(ROOT), "diagnostics.mosaic_gpu_schedule_model",
            "--timeline", str(ROOT / "benchmarks/results/mosaic_gpu_timeline_h200.json"),
            "--seq-len", "4096", "--densities", "0.1", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0 and out.is_file()
