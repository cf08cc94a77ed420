"""Rotary position embeddings in the Hugging Face half-rotation layout, with context scaling.

Frequencies are computed on the host in float32 in the same order of operations as transformers,
so f32 logits agree with it to rounding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from models.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    """Per-pair rotation speeds and the scale applied to cos/sin.

    Args:
      rope: the rope settings.
      head_dim: H.

    Returns:
      inv_freq float32[H // 2] (radians per position) and the attention scale (1.0 except YaRN).
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    base_powers = np.float32(rope.theta) ** exponents
    inv_freq = (np.float32(1.0) / base_powers).astype(np.float32)
    if rope.rope_type == "default":
        return inv_freq, 1.0
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32), 1.0
    if rope.rope_type == "llama3":
        return _llama3_inverse_frequencies(rope, inv_freq), 1.0
    if rope.rope_type == "yarn":
        return _yarn_inverse_frequencies(rope, head_dim, base_powers)
    raise ValueError(f"rope_type={rope.rope_type!r} has no frequency rule")


def _llama3_inverse_frequencies(rope: RopeConfig, inv_freq: np.ndarray) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
    factor = np.float32(rope.factor)
    old_context = np.float32(rope.original_max_position_embeddings)
    low_freq_wavelen = old_context / np.float32(rope.low_freq_factor)
    high_freq_wavelen = old_context / np.float32(rope.high_freq_factor)
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - np.float32(rope.low_freq_factor)) / np.float32(
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _yarn_inverse_frequencies(
    rope: RopeConfig, head_dim: int, base_powers: np.ndarray
) -> tuple[np.ndarray, float]:
    """YaRN: interpolate low frequencies, extrapolate high ones, scale attention logits."""
    factor = rope.factor

    def mscale(scale: float, weight: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = mscale(factor)
    beta_fast = rope.beta_fast or 32
    beta_slow = rope.beta_slow or 1
    original = rope.original_max_position_embeddings

    def correction_dim(num_rotations: float) -> float:
        return (head_dim * math.log(original / (num_rotations * 2 * math.pi))) / (
            2 * math.log(rope.theta)
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoids a zero-width ramp
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = (1 - ramp).astype(np.float32)
    inv_extrapolation = np.float32(1.0) / base_powers
    inv_interpolation = np.float32(1.0) / (np.float32(factor) * base_powers)
    inv_freq = (
        inv_interpolation * (1 - extrapolation_weight) + inv_extrapolation * extrapolation_weight
    )
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_tables(
    positions: jax.Array, inv_freq: np.ndarray, attention_scale: float
) -> tuple[jax.Array, jax.Array]:
    """cos and sin of every position's rotation angles, already scaled.

    Args:
      positions: int32[B, T] absolute positions.
      inv_freq: float32[H // 2].
      attention_scale: multiplies cos and sin (YaRN's attention factor).

    Returns:
      cos, sin: float32[B, T, H] (the H // 2 angles repeated twice, half-rotation layout).
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * attention_scale, jnp.sin(angles) * attention_scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates each head vector by its position's angles (half-rotation pairs i, i + H/2).

    Args:
      x: [B, T, N, H] queries or keys (any head count).
      cos, sin: float32[B, T, H] from `rope_tables`.

    Returns:
      [B, T, N, H] in x's dtype.
    """
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated * sin
