"""examples/own_decoder.py runs as a user runs it and reports what it should: a sparse plan with
pivots and shared heads per prompt and layer, and dense logits when every block is kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAYERS, HEADS = 4, 4  # the example's decoder


def test_own_decoder_example():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "own_decoder.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok", result.stdout

    layer_lines = [line for line in lines if line.strip().startswith("layer ")]
    assert len(layer_lines) == 2 * LAYERS, result.stdout  # two prompts
    categories = {}
    for line in layer_lines:
        density = float(re.search(r"density (\S+)", line).group(1))
        assert 0 < density <= 1, line
        counts = {name: int(n) for name, n in re.findall(r"(\w+)=(\d+)", line)}
        assert sum(counts.values()) == HEADS, line
        for name, count in counts.items():
            categories[name] = categories.get(name, 0) + count
    assert categories.get("pivot", 0) > 0 and categories.get("shared", 0) > 0, categories
    mean_density = float(re.search(r"sparse: mean density (\S+)", result.stdout).group(1))
    assert mean_density < 1

    kept = re.search(r"every block kept: density (\S+), .* (\S+)$", result.stdout, re.MULTILINE)
    assert float(kept.group(1)) == 1.0
    assert float(kept.group(2)) < 1e-4  # relative logit difference to dense attention
