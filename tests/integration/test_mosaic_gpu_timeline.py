"""The timeline's trace reading and fit, on a synthetic trace in the profiler's format."""

import numpy as np
import pytest

from benchmarks.diagnostics import mosaic_gpu_timeline as timeline

COMPUTE_PHASES = (("setup", 100), ("q_wait", 200), ("k0_wait", 300), ("stagger", 50))
EPILOGUE = (("normalize", 80), ("store", 20))
PER_BLOCK, LOOP_TAIL, ISSUE_PER_BLOCK, DRAIN = 500, 250, 400, 900


def synthetic_events(block_counts: np.ndarray, num_sms: int = 3) -> list[dict]:
    """Events as the profiler writes them: ts = (CTA start ns + cycles) / 1000, one tid per
    (CTA, warpgroup), the block loop's phase opened again inside every iteration."""
    num_heads, num_tiles = block_counts.shape
    events = []
    for cta in range(num_heads * num_tiles):
        # The kernel's launch order: query blocks fastest from the last, then heads.
        count = block_counts[cta // num_tiles, num_tiles - 1 - cta % num_tiles]
        start = 1e6 + 7e4 * cta
        for wg in range(3):
            tid = 1 + wg + 3 * cta
            cycles = 0.0

            def event(name, phase, at, tid=tid, start=start):
                events.append(
                    {"name": name, "ph": phase, "ts": (start + at) / 1e3, "pid": 1, "tid": tid}
                )

            if wg < 2:
                for name, length in COMPUTE_PHASES:
                    event(name, "B", cycles)
                    cycles += length
                    event(name, "E", cycles)
                event("blocks", "B", cycles)
                for _ in range(count):
                    event("blocks", "B", cycles)
                    cycles += PER_BLOCK
                    event("blocks", "E", cycles)
                cycles += LOOP_TAIL
                event("blocks", "E", cycles)
                for name, length in EPILOGUE:
                    event(name, "B", cycles)
                    cycles += length
                    event(name, "E", cycles)
            else:
                event("issue", "B", cycles)
                cycles += ISSUE_PER_BLOCK * count
                event("issue", "E", cycles)
                event("drain", "B", cycles)
                cycles += DRAIN
                event("drain", "E", cycles)
    return events


def test_fit_recovers_fixed_and_per_block_cycles():
    counts = np.random.default_rng(0).integers(1, 9, size=(4, 8))
    traces = timeline.trace_phases(synthetic_events(counts), traces_per_cta=3)
    assert len(traces) == 3 * counts.size
    compute, _, memory = timeline.summarize(traces, counts)
    fixed = sum(length for _, length in COMPUTE_PHASES + EPILOGUE) + LOOP_TAIL
    assert compute["fixed_cycles"] == pytest.approx(fixed)
    assert compute["cycles_per_block"] == pytest.approx(PER_BLOCK)
    assert compute["phase_median_cycles"]["q_wait"] == pytest.approx(200)
    median_blocks = np.median(counts) * PER_BLOCK + LOOP_TAIL
    assert compute["phase_median_cycles"]["blocks"] == pytest.approx(median_blocks)
    assert memory["fixed_cycles"] == pytest.approx(DRAIN)
    assert memory["cycles_per_block"] == pytest.approx(ISSUE_PER_BLOCK)
    assert set(memory["phase_median_cycles"]) == {"issue", "drain"}


def test_fit_uses_the_layout_order_of_ctas():
    """Swapping the counts of two rows must move the fit: the CTA-to-row mapping matters."""
    counts = np.arange(1, 33).reshape(4, 8)
    events = synthetic_events(counts)
    traces = timeline.trace_phases(events, traces_per_cta=3)
    assert timeline.summarize(traces, counts)[0]["cycles_per_block"] == pytest.approx(PER_BLOCK)
    shuffled = np.random.default_rng(1).permutation(counts.ravel()).reshape(counts.shape)
    off = timeline.summarize(traces, shuffled)[0]["cycles_per_block"]
    assert off != pytest.approx(PER_BLOCK, rel=0.05)
