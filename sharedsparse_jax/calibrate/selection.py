"""Which clusters share: the online rule simulated on held-out calibration text.

For every held-out sample and cluster, the planner's rule is replayed on the true block maps and
the planner's own last-block estimates (algorithm.md 3.3 D, `planner.plan_layer`):
- the pivot is the cluster's first member in (layer, head) order that is not query-aware; it
  runs dense attention (every causal block) and its pattern is the per-row gamma coverage of
  its exact map (`patterns.row_coverage_pattern`);
- a later-layer, non-query-aware member shares when its vertical and slash profiles are within
  tau_sim of the pivot's and the pivot's own vertical-slash pattern covers < tau_fb of the
  pivot's map; it then runs the pivot's pattern plus a floor vertical-slash pattern;
- everyone else runs its own vertical-slash pattern (the fallback).
Per cluster this measures the **coverage** (the share of each later member's true attention
mass the pivot's pattern covers, averaged over members and samples), its **gain** over the
coverage the members' own fallback patterns give them, and the **saving** (blocks the cluster
runs with sharing against the fallback for the same heads, the pivot's dense row included, as
a share of the fallback's blocks; negative when sharing costs blocks). A cluster shares when
all three clear thresholds: the pattern transfers (coverage), it buys accuracy the fallback
does not have (gain; this is also the paper's exclusion of clusters a vertical-slash pattern
already explains), and it costs at most a bounded share of blocks (saving). Query-aware heads
run the same pattern either way and are left out of both sides.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sharedsparse_jax import estimate, patterns
from sharedsparse_jax.config import SharePrefillConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectionConfig:
    """The planner settings to simulate and the bars a cluster must clear to share.

    Attributes:
      planner: the online planner's config (block size, gamma, tau_sim, tau_fb, min_budget).
      min_coverage: least mean share of a member's attention mass the pivot's pattern covers.
      min_coverage_gain: least excess of that coverage over the members' own fallback coverage.
      min_saving: least net share of the cluster's fallback blocks that sharing saves (a
        negative value bounds what sharing may cost).
      min_share_rate: least share of the eligible later members the online rule lets share
        (similar profiles, pivot not explained by its own fallback): a cluster whose pivot
        runs dense while its members do not share only costs blocks.
      min_size: clusters smaller than this never share.
    """

    planner: SharePrefillConfig = dataclasses.field(default_factory=SharePrefillConfig)
    min_coverage: float = 0.9
    min_coverage_gain: float = 0.02
    min_saving: float = -0.1
    min_share_rate: float = 0.5
    min_size: int = 2

    def __post_init__(self):
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")
        if not -1.0 <= self.min_coverage_gain <= 1.0:
            raise ValueError(f"min_coverage_gain must be in [-1, 1], got {self.min_coverage_gain}")
        if not -1.0 <= self.min_saving <= 1.0:
            raise ValueError(f"min_saving must be in [-1, 1], got {self.min_saving}")
        if not 0.0 <= self.min_share_rate <= 1.0:
            raise ValueError(f"min_share_rate must be in [0, 1], got {self.min_share_rate}")
        if self.min_size < 2:
            raise ValueError(f"min_size must be >= 2 (a pivot and a member), got {self.min_size}")


class SharingSample(NamedTuple):
    """One held-out prompt at the planner's block size.

    block_maps: float32[L, N, Tb, Tb] exact block-averaged maps.
    vertical, slash: float32[L, N, Tb] the planner's last-block profiles.
    num_vertical, num_slash: int32[L, N] its budgets in blocks.
    query_aware: bool[L, N] its query-aware flags.
    """

    block_maps: np.ndarray
    vertical: np.ndarray
    slash: np.ndarray
    num_vertical: np.ndarray
    num_slash: np.ndarray
    query_aware: np.ndarray


class HeadEvidence(NamedTuple):
    """Per (layer, head) of one sample: the masks and numbers the simulation needs.

    pattern: bool[L, N, Tb, Tb] the head's own gamma pattern (what it would share as a pivot).
    fallback: bool[L, N, Tb, Tb] its own vertical-slash pattern.
    floor: bool[L, N, Tb, Tb] its vertical-slash pattern at the floor budget (added when it
      shares).
    vs_ratio: float32[L, N] the share of its map its own vertical-slash pattern covers.
    similar: bool[L, N, L, N] the online similarity test with the first head as the pivot:
      both profiles of the second within tau_sim of the first's. It depends on the sample and
      the planner only, so one computation serves every clustering of the heads.
    """

    pattern: np.ndarray
    fallback: np.ndarray
    floor: np.ndarray
    vs_ratio: np.ndarray
    similar: np.ndarray


def head_evidence(sample: SharingSample, config: SharePrefillConfig) -> HeadEvidence:
    """Every head's pattern, fallback and floor masks and vs_ratio, as the planner builds them.

    Args:
      sample: one prompt's maps and estimates.
      config: the planner's config.

    Returns:
      The evidence (host arrays).
    """
    evidence = _head_evidence(
        jnp.asarray(sample.block_maps, jnp.float32),
        jnp.asarray(sample.vertical, jnp.float32),
        jnp.asarray(sample.slash, jnp.float32),
        jnp.asarray(sample.num_vertical, jnp.int32),
        jnp.asarray(sample.num_slash, jnp.int32),
        config=config,
    )
    return HeadEvidence(*(np.asarray(x) for x in evidence))


@functools.partial(jax.jit, static_argnames=("config",))
def _head_evidence(maps, vertical, slash, num_vertical, num_slash, *, config):
    num_blocks = jnp.asarray(maps.shape[-1], jnp.int32)
    quirks = config.reference_quirks
    own_vertical, own_slash = patterns.vertical_slash_selection(
        vertical, slash, num_vertical, num_slash, num_blocks
    )
    floor_count = jnp.full(num_vertical.shape, config.min_blocks, jnp.int32)
    floor_vertical, floor_slash = patterns.vertical_slash_selection(
        vertical, slash, floor_count, floor_count, num_blocks
    )
    num_layers, num_heads = vertical.shape[:2]
    pivots = np.indices((num_layers, num_heads)).reshape(2, -1).T  # [L * N, 2] (layer, head)
    # One pivot at a time: memory stays at one [L, N, Tb] distance per profile.
    similar = jax.lax.map(
        lambda pivot: _similar_to(vertical, slash, pivot, config=config),
        jnp.asarray(pivots, jnp.int32),
    )
    return HeadEvidence(
        pattern=patterns.row_coverage_pattern(maps, num_blocks, config.gamma, quirks=quirks),
        fallback=patterns.expand_vertical_slash(own_vertical, own_slash),
        floor=patterns.expand_vertical_slash(floor_vertical, floor_slash),
        vs_ratio=patterns.vertical_slash_coverage(maps, own_vertical, own_slash, quirks=quirks),
        similar=similar.reshape(num_layers, num_heads, num_layers, num_heads),
    )


@dataclasses.dataclass(frozen=True)
class ClusterSharing:
    """What sharing did for each cluster on the held-out samples (arrays over clusters [C]).

    Attributes:
      size: members per cluster.
      coverage: mean share of a later member's mass the pivot's pattern covers (NaN: no
        later-layer member was ever eligible).
      coverage_p10: its 10th percentile over (sample, member).
      fallback_coverage: mean share the same members' own vertical-slash patterns cover.
      coverage_gain: coverage - fallback_coverage.
      shared_coverage: mean share covered for members that passed the online test, with the
        pattern they would run (pivot pattern plus floor vertical-slash).
      share_rate: share of eligible later members that passed the online test.
      saving: mean over samples of the net share of the cluster's fallback blocks saved.
      saved_blocks: mean over samples of the net blocks saved (negative: sharing costs).
      fallback_blocks: mean over samples of the blocks the cluster's non-query-aware heads run
        with their own vertical-slash patterns.
      disabled_rate: share of samples whose pivot's own vertical-slash coverage was >= tau_fb.
      pivot: int32[C, 2] the most frequent pivot (layer, head).
      is_shared: bool[C] the decision.
      member_coverage: (cluster, coverage, fallback coverage) of every (sample, later eligible
        member).
    """

    size: np.ndarray
    coverage: np.ndarray
    coverage_p10: np.ndarray
    fallback_coverage: np.ndarray
    coverage_gain: np.ndarray
    shared_coverage: np.ndarray
    share_rate: np.ndarray
    saving: np.ndarray
    saved_blocks: np.ndarray
    fallback_blocks: np.ndarray
    disabled_rate: np.ndarray
    pivot: np.ndarray
    is_shared: np.ndarray
    member_coverage: tuple[tuple[int, float, float], ...]

    @property
    def num_clusters(self) -> int:
        return len(self.size)

    @property
    def model_saving(self) -> float:
        """Net blocks the shared clusters save, as a share of every non-query-aware head's
        fallback blocks (the whole model's vertical-slash cost)."""
        total = float(self.fallback_blocks.sum())
        return float(self.saved_blocks[self.is_shared].sum()) / max(total, 1.0)


def _masked_mass(block_map: np.ndarray, mask: np.ndarray) -> float:
    return float(np.where(mask, block_map, 0.0).sum() / block_map.sum())


def simulate_sharing(
    labels: np.ndarray,
    samples: Sequence[SharingSample],
    config: SelectionConfig,
    *,
    evidence: Sequence[HeadEvidence] | None = None,
) -> ClusterSharing:
    """Replays the online sharing rule per cluster and decides which clusters share.

    Args:
      labels: int[L, N] cluster of every head (0..C-1).
      samples: held-out prompts (each at least `config.planner.dense_below` tokens).
      config: planner settings and thresholds.
      evidence: `head_evidence` of each sample, when already computed.

    Returns:
      Per-cluster measurements and decisions.
    """
    labels = np.asarray(labels)
    if not samples:
        raise ValueError("need at least one held-out sample to choose shared clusters")
    for sample in samples:
        if sample.block_maps.shape[:2] != labels.shape:
            raise ValueError(
                f"sample maps are for {sample.block_maps.shape[:2]} (layers, heads), the"
                f" clustering for {labels.shape}"
            )
    planner = config.planner
    evidence = evidence or [head_evidence(s, planner) for s in samples]
    num_clusters = int(labels.max()) + 1
    members_of = [
        [tuple(int(x) for x in m) for m in np.argwhere(labels == c)] for c in range(num_clusters)
    ]  # np.argwhere is row-major: (layer, head) order
    coverage, fallback_cov, shared_cov, passed, eligible_count = ([] for _ in range(5))
    saving, saved_blocks, fallback_total = [], [], []
    disabled, pivots, member_records = [], [], []
    for c, members in enumerate(members_of):
        cov_c, fb_c, sh_c, saving_c, disabled_c, pivots_c = [], [], [], [], [], []
        saved_c, fallback_c = [], []
        num_passed = num_eligible = 0
        for sample, ev in zip(samples, evidence, strict=True):
            eligible = [m for m in members if not sample.query_aware[m]]
            if not eligible:
                saving_c.append(0.0)
                saved_c.append(0.0)
                fallback_c.append(0.0)
                continue
            pivot = eligible[0]
            pivots_c.append(pivot)
            is_disabled = not bool(planner.below_fallback_coverage(ev.vs_ratio[pivot]))
            disabled_c.append(is_disabled)
            num_blocks = sample.block_maps.shape[-1]
            fallback_blocks = sum(int(ev.fallback[m].sum()) for m in eligible)
            # The pivot runs every causal block instead of its fallback.
            saved = int(ev.fallback[pivot].sum()) - num_blocks * (num_blocks + 1) // 2
            later = [m for m in eligible[1:] if m[0] > pivot[0]]  # same layer: no pattern yet
            for m in later:
                member_map = sample.block_maps[m]
                cov = _masked_mass(member_map, ev.pattern[pivot])
                fallback_cov_m = _masked_mass(member_map, ev.fallback[m])
                cov_c.append(cov)
                fb_c.append(fallback_cov_m)
                member_records.append((c, cov, fallback_cov_m))
                num_eligible += 1
                if is_disabled or not ev.similar[(*pivot, *m)]:
                    continue
                num_passed += 1
                shared_mask = ev.pattern[pivot] | ev.floor[m]
                sh_c.append(_masked_mass(member_map, shared_mask))
                saved += int(ev.fallback[m].sum()) - int(shared_mask.sum())
            saving_c.append(saved / max(fallback_blocks, 1))
            saved_c.append(float(saved))
            fallback_c.append(float(fallback_blocks))
        coverage.append(cov_c)
        fallback_cov.append(fb_c)
        shared_cov.append(sh_c)
        passed.append(num_passed)
        eligible_count.append(num_eligible)
        saving.append(float(np.mean(saving_c)))
        saved_blocks.append(float(np.mean(saved_c)))
        fallback_total.append(float(np.mean(fallback_c)))
        disabled.append(float(np.mean(disabled_c)) if disabled_c else 1.0)
        pivots.append(_most_frequent(pivots_c) if pivots_c else members[0])

    def mean(values):
        return float(np.mean(values)) if values else float("nan")

    size = np.array([len(m) for m in members_of], np.int32)
    coverage_mean = np.array([mean(v) for v in coverage])
    fallback_mean = np.array([mean(v) for v in fallback_cov])
    gain = coverage_mean - fallback_mean
    saving_arr = np.array(saving)
    share_rate = np.array(
        [p / e if e else 0.0 for p, e in zip(passed, eligible_count, strict=True)]
    )
    with np.errstate(invalid="ignore"):  # NaN (no eligible later member) never shares
        is_shared = (
            (size >= config.min_size)
            & (coverage_mean >= config.min_coverage)
            & (gain >= config.min_coverage_gain)
            & (saving_arr >= config.min_saving)
            & (share_rate >= config.min_share_rate)
        )
    return ClusterSharing(
        size=size,
        coverage=coverage_mean,
        coverage_p10=np.array([np.percentile(v, 10) if v else np.nan for v in coverage]),
        fallback_coverage=fallback_mean,
        coverage_gain=gain,
        shared_coverage=np.array([mean(v) for v in shared_cov]),
        share_rate=share_rate,
        saving=saving_arr,
        saved_blocks=np.array(saved_blocks),
        fallback_blocks=np.array(fallback_total),
        disabled_rate=np.array(disabled),
        pivot=np.array(pivots, np.int32).reshape(-1, 2),
        is_shared=is_shared.astype(bool),
        member_coverage=tuple(member_records),
    )


@functools.partial(jax.jit, static_argnames=("config",))
def _similar_to(vertical, slash, pivot, *, config):
    """bool[L, N]: each head's profiles are within tau_sim of the pivot's (both of them)."""
    valid = jnp.ones(vertical.shape[-1:], bool)
    is_similar = jnp.ones(vertical.shape[:-1], bool)
    for profile in (vertical, slash):
        distance = estimate.sqrt_js_distance(
            profile[pivot[0], pivot[1]], profile, valid, quirks=config.reference_quirks
        )
        is_similar &= distance < config.tau_sim
    return is_similar


def _most_frequent(items: list[tuple[int, int]]) -> tuple[int, int]:
    values, counts = np.unique(np.array(items), axis=0, return_counts=True)
    return tuple(int(x) for x in values[np.argmax(counts)])
