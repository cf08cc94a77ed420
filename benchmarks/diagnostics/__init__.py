"""Diagnostics behind docs/results.md, not tools to run on a model.

- `mosaic_gpu_timeline`: where a mosaic_gpu work item spends its cycles (Mosaic GPU profiler).
- `mosaic_gpu_schedule_model`: the makespan of launch schedules, from the timeline's costs.
- `synthetic_heads`: synthetic attention layers matched to profiled heads (the inputs of
  `benchmarks.method_attention`).
"""
