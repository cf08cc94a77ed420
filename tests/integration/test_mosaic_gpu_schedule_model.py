"""The kernel's launch order and the schedule model's makespans, on cases with known answers."""

import numpy as np
import pytest

from benchmarks.diagnostics import mosaic_gpu_schedule_model as model
from benchmarks.diagnostics import mosaic_gpu_timeline as timeline


def test_launch_order_is_the_kernels_cta_order():
    counts = np.arange(24).reshape(4, 6)  # [N, Tb]
    order = timeline.launch_order(counts)
    num_heads, num_tiles = counts.shape
    for cta, blocks in enumerate(order):
        # Query blocks fastest from the last, then heads (mosaic_gpu's work_item).
        assert blocks == counts[cta // num_tiles, num_tiles - 1 - cta % num_tiles]


def test_equal_items_fill_every_sm_alike():
    blocks = np.full(12, 5)
    eff = model.efficiencies(blocks, fixed_cycles=0.0, cycles_per_block=10.0, num_sms=4)
    assert all(e == pytest.approx(1.0) for e in eff.values())
    eff = model.efficiencies(blocks, fixed_cycles=50.0, cycles_per_block=10.0, num_sms=4)
    assert all(e == pytest.approx(0.5) for e in eff.values())


def test_schedules_on_a_hand_worked_case():
    # Costs 8, 7, 6, 5, 4, 3 on two SMs.
    costs = np.array([8.0, 7.0, 6.0, 5.0, 4.0, 3.0])
    assert model.makespan("persistent_round_robin", costs, 2) == 18  # 8+6+4 / 7+5+3
    assert model.makespan("persistent_snake", costs, 2) == 17  # 8+5+4 / 7+6+3
    assert model.makespan("persistent_queue", costs, 2) == 17  # 8,5,4 / 7,6,3 as SMs free
    assert model.makespan("persistent_chunks", costs, 2) == 21  # starts 0,8,15 < 16.5 / 21,26,30
    assert model.makespan("one_cta_per_item", costs, 2) == 17


def test_list_scheduling_never_loses_to_round_robin_on_heavy_first_items():
    rng = np.random.default_rng(0)
    for _ in range(20):
        costs = np.sort(rng.integers(1, 50, size=200).astype(float))[::-1]
        queue = model.makespan("persistent_queue", costs, 7)
        assert queue <= model.makespan("persistent_round_robin", costs, 7)
