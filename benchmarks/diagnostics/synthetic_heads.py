"""Synthetic attention layers whose heads split their mass like a real model's profiled heads.

Each query head gets an archetype, a real head from a profile (benchmarks/attention_profiles.py),
and its logits q_t . k_s / sqrt(H) are built from parts whose strengths are solved so that the
last query block's mass splits into the archetype's sink / band / vertical / slash / rest shares:

  logit(t, s) = sink * [s == 0]
              + band * kern(t - s) + slash * sum_j kern(t - s - d_j)    (local band, slashes)
              + vertical * [s is one of the head's stripe tokens]
              + clump * z(block of s) . u(t)                             (clumped diffuse mass)
              + noise

`kern` is a Gaussian of width KERNEL_WIDTH tokens written as random Fourier features (so the
band and the slashes live in the same feature dims: q holds phi(t) and phi(t - d_j), k holds
phi(s)); z is a 2-d standard normal per key block and u(t) a unit vector turning twice over the
prompt, so the rest's clumps move with the query (content, not columns), and `clump` is set so
that 95 % of the last block's rest mass sits in the archetype's share of blocks
(`rest_concentration`). Heads of one KV group share k
(stripes, clumps, features) and take archetypes from one real KV group, so they are near-copies
where the real heads are. Every layer reuses the archetypes with fresh noise, and the sharing
table clusters each head index across layers (clusters spanning layers).

The shares are held at their profiled values at every length: the rest's mass is spread over
S keys, so longer prompts need more blocks to reach gamma, as a real head with diffuse mass does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.attention_profiles import SHARES, decompose_rows
from sharedsparse_jax.sharing import SharingTable

KERNEL_WIDTH = 8.0  # tokens, standard deviation of the band / slash kernel
NOISE_LOGIT_STD = 0.5
MAX_LINES = 4  # stripe dims per KV group
FEATURES = 3 + MAX_LINES  # sink, stripes (MAX_LINES), two clump dims
CLUMP_TURNS = 2.0  # turns of u(t) over the prompt
# Solved parts, in the order of the strength vector (each matched to its share).
PARTS = ("sink", "band", "vertical", "slash")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines a synthetic layer stack except its length.

    Attributes:
      num_heads, num_kv_heads, head_dim: the layer's shape (N, K, H).
      num_layers: L, layers built (each with fresh noise).
      map_block_size: block size of the profile's maps (shares are measured on it).
      archetypes: N profile entries, grouped by KV head (N // K consecutive heads share k).
      profile_name: the profile's model.
      seed: randomness of everything (stripes, clumps, features, noise).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    map_block_size: int
    archetypes: tuple[dict, ...]
    profile_name: str
    seed: int = 0

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def num_pairs(self) -> int:
        """Random Fourier frequency pairs (the rest of the head dim is noise, at least 8)."""
        return min(32, (self.head_dim - FEATURES - 8) // 2)

    def targets(self) -> np.ndarray:
        """float[N, 5] target shares in SHARES order."""
        return np.array([[a[name] for name in SHARES] for a in self.archetypes])


def make_spec(
    profile: dict,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    num_layers: int,
    seed: int = 0,
) -> SyntheticSpec:
    """Samples N archetypes: one real KV group per synthetic KV group, heads drawn from it."""
    rng = np.random.default_rng(seed)
    real_group = profile["num_heads"] // profile["num_kv_heads"]
    by_group: dict[tuple[int, int], list[dict]] = {}
    for head in profile["heads"]:
        by_group.setdefault((head["layer"], head["head"] // real_group), []).append(head)
    keys = list(by_group)
    chosen = rng.choice(len(keys), num_kv_heads, replace=len(keys) < num_kv_heads)
    group = num_heads // num_kv_heads
    archetypes = []
    for index in chosen:
        members = by_group[keys[index]]
        picks = rng.choice(len(members), group, replace=len(members) < group)
        archetypes += [members[i] for i in picks]
    return SyntheticSpec(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        num_layers=num_layers,
        map_block_size=profile["block_size"],
        archetypes=tuple(archetypes),
        profile_name=profile["model"],
        seed=seed,
    )


def sharing_table(spec: SyntheticSpec, shared_fraction: float = 0.25) -> SharingTable:
    """Each head index is a cluster across the layers; the clusters share whose heads have the
    most clumped diffuse mass (rest share times 1 - rest_concentration): what a pattern from the
    last block misses and a pivot's exact map catches, the heads calibration picks."""
    num_shared = int(round(shared_fraction * spec.num_heads))
    clumped = np.array([a["rest"] * (1.0 - a["rest_concentration"]) for a in spec.archetypes])
    shared = np.argsort(-clumped, kind="stable")[:num_shared]
    clusters = {
        str(h): [[layer, h] for layer in range(spec.num_layers)] for h in range(spec.num_heads)
    }
    return SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": [str(h) for h in sorted(shared)]},
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
    )


@dataclasses.dataclass(frozen=True)
class HeadLines:
    """Per-length host data: where each group's stripes are and each head's lines.

    Attributes:
      stripe_positions: int[K, MAX_LINES] stripe tokens of each KV group.
      num_vertical: int[N] stripes each head uses (its group's first ones).
      slash_offsets: float[N, MAX_LINES] token offsets of each head's slashes (unused: 0).
      has_slash: bool[N, MAX_LINES].
      frequencies: float[K, P] each group's Fourier frequencies.
      clumps: float[K, Sb, 2] each group's clump vector per map block.
      seq_len: the prompt length they were drawn for.
    """

    stripe_positions: np.ndarray
    num_vertical: np.ndarray
    slash_offsets: np.ndarray
    has_slash: np.ndarray
    frequencies: np.ndarray
    clumps: np.ndarray
    seq_len: int

    def clump_angle(self, positions):
        """The angle of u(t) at the given positions."""
        return (2.0 * np.pi * CLUMP_TURNS / self.seq_len) * positions


def head_lines(spec: SyntheticSpec, seq_len: int) -> HeadLines:
    """Stripes, slashes, frequencies and clumps for a prompt of seq_len tokens."""
    rng = np.random.default_rng(spec.seed + 1)
    bs = spec.map_block_size
    low = max(1, seq_len // 50)
    high = max(low + 1, seq_len - 4 * bs)  # short prompts of a coarse map: stripes still fit
    stripes = np.sort(rng.integers(low, high, size=(spec.num_kv_heads, MAX_LINES)), axis=1)
    num_vertical = np.zeros(spec.num_heads, int)
    slash_offsets = np.zeros((spec.num_heads, MAX_LINES))
    has_slash = np.zeros((spec.num_heads, MAX_LINES), bool)
    for h, archetype in enumerate(spec.archetypes):
        lines = len(archetype.get("vertical_positions", []))
        if archetype["vertical"] > 3e-3:
            num_vertical[h] = min(MAX_LINES, max(1, lines))
        offsets = [d for d in archetype.get("slash_offsets_tokens", []) if d < seq_len // 2]
        if archetype["slash"] > 3e-3:
            offsets = (offsets or [min(4 * bs, seq_len // 4)])[:MAX_LINES]
            slash_offsets[h, : len(offsets)] = offsets
            has_slash[h, : len(offsets)] = True
    frequencies = rng.normal(0.0, 1.0 / KERNEL_WIDTH, size=(spec.num_kv_heads, spec.num_pairs))
    clumps = rng.standard_normal((spec.num_kv_heads, -(-seq_len // bs), 2))
    return HeadLines(stripes, num_vertical, slash_offsets, has_slash, frequencies, clumps, seq_len)


def clump_strengths(spec: SyntheticSpec, lines: HeadLines) -> np.ndarray:
    """float[N] clump weight giving each head's target rest_concentration (bisection)."""
    strengths = np.zeros(spec.num_heads)
    for h, archetype in enumerate(spec.archetypes):
        angle = lines.clump_angle(lines.seq_len - 1.0)
        z = lines.clumps[h // spec.group] @ np.array([np.cos(angle), np.sin(angle)])
        target = min(0.95, archetype.get("rest_concentration", 0.95))

        def concentration(beta, z=z):
            weights = np.sort(np.exp(beta * (z - z.max())))[::-1]
            cumulative = np.cumsum(weights)
            return (np.searchsorted(cumulative, 0.95 * cumulative[-1]) + 1) / z.size

        low, high = 0.0, 8.0
        for _ in range(30):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if concentration(mid) > target else (low, mid)
        strengths[h] = 0.5 * (low + high)
    return strengths


def _features(positions, frequencies):
    """[T, K, 2P] phi(t) = (cos wt, sin wt) / sqrt(P) per group."""
    angles = positions[:, None, None] * frequencies[None]
    scale = 1.0 / np.sqrt(frequencies.shape[-1])
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1) * scale


def build_keys(spec, lines, seq_len, key, dtype):
    """k [1, S, K, H] (logit units: q . k / sqrt(H) is the logit once q is scaled)."""
    positions = jnp.arange(seq_len, dtype=jnp.float32)
    num_noise = spec.head_dim - FEATURES - 2 * spec.num_pairs
    noise_scale = np.sqrt(NOISE_LOGIT_STD / np.sqrt(num_noise))
    sink = (positions == 0).astype(jnp.float32)[:, None, None] * jnp.ones((1, spec.num_kv_heads, 1))
    stripe = (positions[:, None, None] == jnp.asarray(lines.stripe_positions)[None]).astype(
        jnp.float32
    )  # [S, K, MAX_LINES]
    block = jnp.arange(seq_len) // spec.map_block_size
    clump = jnp.asarray(lines.clumps, jnp.float32).transpose(1, 0, 2)[block]  # [S, K, 2]
    features = _features(positions, jnp.asarray(lines.frequencies, jnp.float32))
    noise = noise_scale * jax.random.normal(key, (seq_len, spec.num_kv_heads, num_noise))
    k = jnp.concatenate([sink, stripe, clump, features, noise], axis=-1)
    return k[None].astype(dtype)


def build_queries(spec, lines, strengths, clump, positions, key, dtype):
    """q [1, T, N, H] for the given positions; strengths float[N, 4] in PARTS order."""
    positions = jnp.asarray(positions, jnp.float32)
    num_positions = positions.shape[0]
    num_noise = spec.head_dim - FEATURES - 2 * spec.num_pairs
    noise_scale = np.sqrt(NOISE_LOGIT_STD / np.sqrt(num_noise))
    group = spec.group
    strengths = jnp.asarray(strengths, jnp.float32)
    frequencies = jnp.asarray(np.repeat(lines.frequencies, group, axis=0), jnp.float32)  # [N, P]
    # sum_j a_j exp(i w (t - d_j)) = exp(i w t) * u with u = band + slash * sum_j exp(-i w d_j).
    offsets = jnp.asarray(lines.slash_offsets, jnp.float32)
    has_slash = jnp.asarray(lines.has_slash)
    phase = -frequencies[:, :, None] * offsets[:, None, :]  # [N, P, MAX_LINES]
    u_real = strengths[:, 1:2] + strengths[:, 3:4] * jnp.sum(
        jnp.where(has_slash[:, None], jnp.cos(phase), 0.0), -1
    )
    u_imag = strengths[:, 3:4] * jnp.sum(jnp.where(has_slash[:, None], jnp.sin(phase), 0.0), -1)
    angles = positions[:, None, None] * frequencies[None]  # [T, N, P]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    scale = 1.0 / np.sqrt(spec.num_pairs)
    q_cos = (cos * u_real - sin * u_imag) * scale
    q_sin = (sin * u_real + cos * u_imag) * scale
    uses_stripe = jnp.arange(MAX_LINES)[None, :] < jnp.asarray(lines.num_vertical)[:, None]
    fixed = jnp.concatenate(
        [strengths[:, 0:1], jnp.where(uses_stripe, strengths[:, 2:3], 0.0)], axis=-1
    )  # [N, 1 + MAX_LINES]: sink and stripe dims
    angle = lines.clump_angle(positions)[:, None, None]
    turning = jnp.asarray(clump, jnp.float32)[None, :, None] * jnp.concatenate(
        [jnp.cos(angle), jnp.sin(angle)], axis=-1
    )  # [T, N, 2]
    noise = noise_scale * jax.random.normal(key, (num_positions, spec.num_heads, num_noise))
    q = jnp.concatenate(
        [jnp.broadcast_to(fixed, (num_positions,) + fixed.shape), turning, q_cos, q_sin, noise],
        axis=-1,
    )
    return (q * np.sqrt(spec.head_dim))[None].astype(dtype)


@functools.partial(jax.jit, static_argnames=("block_size", "num_blocks"))
def attention_rows(q, k, start, *, block_size, num_blocks):
    """float32[N, num_blocks] block-averaged attention rows of query block rows starting at
    `start` (q holds the query block's block_size rows; k all keys). Row r = start // bs."""
    _, t, n, h = q.shape
    kv = k.shape[2]
    qg = q[0].astype(jnp.float32).reshape(t, kv, n // kv, h)
    logits = jnp.einsum(
        "tkgh,skh->kgts", qg, k[0].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    ).reshape(n, t, -1) / np.sqrt(h)
    query_pos = start + jnp.arange(t)
    logits = jnp.where(
        jnp.arange(k.shape[1])[None, None] <= query_pos[None, :, None], logits, -1e30
    )
    probs = jax.nn.softmax(logits, axis=-1)
    pad = num_blocks * block_size - k.shape[1]
    probs = jnp.pad(probs, ((0, 0), (0, 0), (0, pad)))
    return probs.reshape(n, t, num_blocks, block_size).sum(-1).mean(1)


def _known_shares(spec, lines, rows, row_index):
    """float[N, 5] shares of the given rows by construction (which blocks hold which part)."""
    bs = spec.map_block_size
    shares = np.zeros((spec.num_heads, len(SHARES)))
    cols = np.arange(rows.shape[-1])
    for h in range(spec.num_heads):
        stripe_blocks = lines.stripe_positions[h // spec.group][: lines.num_vertical[h]] // bs
        slash_blocks = (lines.slash_offsets[h][lines.has_slash[h]] // bs).astype(int)
        for i, r in enumerate(row_index):
            row = np.where(cols <= r, rows[h, i], 0.0)
            offset = r - cols
            sink = cols == 0
            band = (offset < 2) & ~sink
            vertical = np.isin(cols, stripe_blocks) & ~sink & ~band
            near_slash = np.zeros_like(sink)
            for d in slash_blocks:
                near_slash |= np.abs(offset - d) <= 1
            slash = near_slash & ~sink & ~band & ~vertical & (offset >= 0)
            parts = [row[m].sum() for m in (sink, band, vertical, slash)]
            shares[h, :4] += parts
            shares[h, 4] += 1.0 - sum(parts)
    return shares / len(row_index)


def _log_odds(share):
    share = np.clip(share, 1e-6, 1.0 - 1e-4)
    return np.log(share / (1.0 - share))


def solve_strengths(spec, lines, k, clump, seq_len, dtype, iterations=40, tolerance=3e-3):
    """float[N, 4] strengths matching the last query block's shares to the targets.

    Log-odds updates (a part's mass grows about like exp of its strength), stopped when
    every enabled part is within `tolerance` of its target.

    Returns:
      The strengths and the shares reached (by construction), float[N, 5].
    """
    bs = spec.map_block_size
    num_blocks = -(-seq_len // bs)
    last_rows = [num_blocks - 2, num_blocks - 1]
    targets = spec.targets()
    enabled = targets[:, :4] > 3e-3
    enabled[:, 2] &= lines.num_vertical > 0
    enabled[:, 3] &= lines.has_slash.any(1)
    strengths = np.where(enabled, 4.0, 0.0)
    noise_key = jax.random.PRNGKey(spec.seed + 2)

    @jax.jit
    def last_rows_of(strengths, k):
        rows = []
        for r in last_rows:
            positions = np.arange(r * bs, min((r + 1) * bs, seq_len))
            q = build_queries(spec, lines, strengths, clump, positions, noise_key, dtype)
            rows.append(attention_rows(q, k, r * bs, block_size=bs, num_blocks=num_blocks))
        return jnp.stack(rows, axis=1)  # [N, 2, Sb]

    reached = None
    for step in range(iterations):
        rows = np.asarray(last_rows_of(jnp.asarray(strengths, jnp.float32), k))
        reached = _known_shares(spec, lines, rows, last_rows)
        gap = np.where(enabled, np.abs(reached[:, :4] - targets[:, :4]), 0.0)
        if gap.max() < tolerance or step == iterations - 1:
            break
        # Raising one part's logits by x multiplies its odds by about exp(x).
        step_size = _log_odds(targets[:, :4]) - _log_odds(reached[:, :4])
        strengths = np.where(enabled, np.clip(strengths + 0.8 * step_size, -30.0, 40.0), 0.0)
    return strengths, reached


@dataclasses.dataclass(frozen=True)
class SyntheticLayers:
    """q [L, 1, S, N, H], k, v [L, 1, S, K, H] and what built them."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    lines: HeadLines
    strengths: np.ndarray
    clump: np.ndarray
    solved_shares: np.ndarray


def build_layers(spec: SyntheticSpec, seq_len: int, dtype=jnp.bfloat16) -> SyntheticLayers:
    """Solves the strengths on layer 0's keys, then builds every layer with fresh noise."""
    lines = head_lines(spec, seq_len)
    clump = clump_strengths(spec, lines)
    base = jax.random.PRNGKey(spec.seed)
    make_keys = jax.jit(lambda key: build_keys(spec, lines, seq_len, key, dtype))
    k0 = make_keys(jax.random.fold_in(base, 0))
    strengths, solved = solve_strengths(spec, lines, k0, clump, seq_len, dtype)
    make_queries = jax.jit(
        lambda positions, key: build_queries(spec, lines, strengths, clump, positions, key, dtype)
    )
    positions = jnp.arange(seq_len, dtype=jnp.float32)
    qs, ks, vs = [], [], []
    for layer in range(spec.num_layers):
        keys = jax.random.split(jax.random.fold_in(base, layer), 3)
        ks.append(k0 if layer == 0 else make_keys(keys[0]))
        qs.append(make_queries(positions, keys[1]))
        vs.append(jax.random.normal(keys[2], (1, seq_len, spec.num_kv_heads, spec.head_dim), dtype))
    return SyntheticLayers(
        jnp.stack(qs), jnp.stack(ks), jnp.stack(vs), lines, strengths, clump, solved
    )


def check_shares(spec: SyntheticSpec, layers: SyntheticLayers, num_rows: int = 14) -> np.ndarray:
    """float[N, 5] layer 0's shares as the profile measured them (`decompose_rows`, blind to
    the construction), on `num_rows` sampled query blocks of the map's block size plus the last
    two (the shares come from those two)."""
    seq_len = layers.q.shape[2]
    bs = spec.map_block_size
    num_blocks = -(-seq_len // bs)
    spread = np.linspace(min(4, num_blocks - 3), num_blocks - 3, num_rows).astype(int)
    row_index = np.unique(np.concatenate([spread, [num_blocks - 2, num_blocks - 1]]))
    row_index = row_index[row_index >= 0]
    q, k = layers.q[0], layers.k[0]
    rows = []
    for r in row_index:
        start = int(r) * bs
        stop = min(start + bs, seq_len)
        block_q = jax.lax.slice_in_dim(q, start, stop, axis=1)
        rows.append(
            np.asarray(attention_rows(block_q, k, start, block_size=bs, num_blocks=num_blocks))
        )
    rows = np.stack(rows, axis=1)  # [N, R, Sb]
    measured = np.zeros((spec.num_heads, len(SHARES)))
    for h in range(spec.num_heads):
        parts = decompose_rows(rows[h], row_index, block_size=bs)
        measured[h] = [parts[name] for name in SHARES]
    return measured
