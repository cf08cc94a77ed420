"""Cumulative-mass selection without sorting: "the largest entries until their sum reaches x".

The reference sorts (a profile of T entries per head, a map of Tb^2 entries per query-aware
head). Here the cut is found by a radix search on the bit pattern of the threshold value, which
for non-negative floats orders like the values: a few passes of masked sums, with no sort and no
extra memory. With distinct values the selected sets equal the reference's; tied values at the
cut are kept or dropped together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Candidate thresholds per pass plus one, by row length. A pass tests its candidates in one
# broadcast reduction; on the H200 radix 16 (8 float32 passes instead of 31) is faster for rows
# up to 32K entries and several times slower for longer ones, as if XLA re-read the row per
# candidate (docs/results.md section 2).
WIDE_RADIX = 16
WIDE_RADIX_MAX_ROW = 32768


def _bits_type(dtype):
    return jnp.int64 if jnp.dtype(dtype).itemsize == 8 else jnp.int32


def mass_threshold(
    x: jax.Array,
    target: jax.Array | float,
    valid: jax.Array | None = None,
    *,
    radix: int | None = None,
) -> jax.Array:
    """The smallest theta with sum(x[x >= theta]) <= target, along the last axis.

    A radix search on theta's bit pattern: each pass sums x above radix - 1 evenly spaced
    candidate thresholds and keeps the interval between the two candidates that bracket the
    cut, log2(radix) bits per pass. Every radix finds the same theta.

    Args:
      x: [..., n] non-negative values.
      target: broadcastable to x.shape[:-1].
      valid: optional bool mask of x's shape; invalid entries take no part.
      radix: candidates per pass plus one, a power of two (2 is plain bisection); None:
        WIDE_RADIX for rows of up to WIDE_RADIX_MAX_ROW entries, else 2.

    Returns:
      [...] thresholds in x's dtype (0 when the whole valid mass is <= target).
    """
    if radix is None:
        radix = WIDE_RADIX if x.shape[-1] <= WIDE_RADIX_MAX_ROW else 2
    if radix < 2 or radix & (radix - 1):
        raise ValueError(f"radix must be a power of two >= 2, got {radix}")
    bits = _bits_type(x.dtype)
    x = x if valid is None else jnp.where(valid, x, 0.0)
    target = jnp.broadcast_to(jnp.asarray(target, x.dtype), x.shape[:-1])

    def fits(theta_bits):  # [..., c] candidate bit patterns -> [..., c] bool
        theta = jax.lax.bitcast_convert_type(theta_bits, x.dtype)
        above = x[..., None, :] >= theta[..., None]
        return jnp.sum(jnp.where(above, x[..., None, :], 0.0), axis=-1) <= target[..., None]

    # Invariant: fits(hi) and not fits(lo); the bits of +inf keep nothing, so fit.
    lo = jnp.zeros(x.shape[:-1], bits)
    hi = jnp.full(x.shape[:-1], jax.lax.bitcast_convert_type(jnp.asarray(jnp.inf, x.dtype), bits))
    everything_fits = fits(lo[..., None])[..., 0]
    value_bits = 8 * jnp.dtype(x.dtype).itemsize - 1  # non-negative: the sign bit is 0
    num_passes = -(-value_bits // (radix.bit_length() - 1))
    j = jnp.arange(1, radix, dtype=bits)

    def narrow(_, bounds):
        lo, hi = bounds
        width = (hi - lo)[..., None]  # candidates floor(width * j / radix), without overflow
        candidate = lo[..., None] + (width // radix) * j + (width % radix) * j // radix
        ok = fits(candidate)
        new_lo = jnp.max(jnp.where(ok, lo[..., None], candidate), axis=-1)
        new_hi = jnp.min(jnp.where(ok, candidate, hi[..., None]), axis=-1)
        return new_lo, new_hi

    # Unrolled into straight-line passes: no device while-loop around a few tiny steps.
    _, hi = jax.lax.fori_loop(0, num_passes, narrow, (lo, hi), unroll=True)
    theta = jax.lax.bitcast_convert_type(hi, x.dtype)
    return jnp.where(everything_fits, jnp.zeros_like(theta), theta)


def keep_within_mass(
    x: jax.Array, target: jax.Array | float, valid: jax.Array | None = None
) -> jax.Array:
    """bool[..., n]: the largest entries whose running sum stays <= target (the entry that
    crosses is not kept). With `valid`, only valid entries are considered."""
    theta = mass_threshold(x, target, valid)
    keep = x >= theta[..., None]
    return keep if valid is None else keep & valid


def count_to_reach(
    x: jax.Array, target: jax.Array | float, valid: jax.Array | None = None
) -> jax.Array:
    """int32[...]: how many of the largest entries it takes to pass target (the crossing one
    included): the count whose running sum stays <= target, plus one."""
    return jnp.sum(keep_within_mass(x, target, valid), axis=-1, dtype=jnp.int32) + 1


def mass_target(gamma: float, scale: jax.Array | float = 1.0, *, quirks: bool):
    """The running-sum target `gamma * scale`, with gamma = 1 meaning "everything".

    A float running sum of probabilities may end a rounding error above or below their true
    total, so at gamma = 1 the reference's cut can drop the last few entries; the fixed mode
    keeps all of them.
    """
    if gamma >= 1.0 and not quirks:
        return jnp.inf
    return gamma * scale


def top_k_mask(x: jax.Array, k: jax.Array) -> jax.Array:
    """bool[..., n]: exactly min(k[...], n) of the largest entries of x along the last axis.

    Entries tied at the cut are taken by index, lowest first, so a run of equal values (for
    example probabilities that underflowed to zero) fills the count and no more. NaN entries
    are never taken.
    """
    descending = -jnp.sort(-x, axis=-1)
    index = jnp.clip(k - 1, 0, x.shape[-1] - 1)
    kth = jnp.take_along_axis(descending, index[..., None], axis=-1)
    above = x > kth
    tied = x == kth
    room = k[..., None] - jnp.sum(above, axis=-1, keepdims=True)
    take_tied = tied & (jnp.cumsum(tied, axis=-1) <= room)
    return (above | take_tied) & (k[..., None] > 0)
