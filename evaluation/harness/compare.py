"""An attention that runs a candidate and dense attention on the same inputs and reports the gap.

`ComparedAttention` implements the models' `PrefillAttention` protocol. Each layer it runs the
candidate (a sparse method) and the reference (dense) on the layer's own q, k and v, passes the
candidate's output on (so the forward pass is exactly the candidate's), and adds the relative
error of the candidate's output to the layer's stats. The error of layer l is therefore the
error that layer itself makes, given the inputs the sparse run produced, not the drift
accumulated through earlier layers (KL of the final logits measures that).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from models.attention import DenseAttention, PrefillAttention

__all__ = ["ComparedAttention", "masked_relative_error"]


def masked_relative_error(
    reference: jax.Array, candidate: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Relative Frobenius error ||candidate - reference|| / ||reference|| over real positions.

    Args:
      reference: [B, T, N, H] dense attention output.
      candidate: [B, T, N, H] the candidate's output.
      lengths: int32[B] real positions per sequence (the rest is end padding, left out).

    Returns:
      float32[B] over all heads, and float32[B, N] per head (0 where the reference is 0).
    """
    is_real = (jnp.arange(reference.shape[1])[None, :] < lengths[:, None])[:, :, None, None]
    ref = jnp.where(is_real, reference.astype(jnp.float32), 0.0)
    diff = jnp.where(is_real, candidate.astype(jnp.float32) - ref, 0.0)
    diff_sq = jnp.sum(diff * diff, axis=(1, 3))  # [B, N]
    ref_sq = jnp.sum(ref * ref, axis=(1, 3))

    def ratio(num, den):
        return jnp.where(den > 0, jnp.sqrt(num / jnp.where(den > 0, den, 1.0)), 0.0)

    return ratio(diff_sq.sum(-1), ref_sq.sum(-1)), ratio(diff_sq, ref_sq)


@dataclasses.dataclass(frozen=True)
class ComparedAttention:
    """The candidate's attention, with each layer's relative error to dense in its stats.

    Attributes:
      candidate: the attention whose output propagates (e.g. a SharePrefillAttention).
      reference: the attention it is compared with (dense by default).
    """

    candidate: PrefillAttention
    reference: PrefillAttention = dataclasses.field(default_factory=DenseAttention)

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> Any:
        """Both attentions' states, as a pair."""
        return (
            self.candidate.init_state(batch, num_queries, num_keys),
            self.reference.init_state(batch, num_queries, num_keys),
        )

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Both attentions must fit the model."""
        self.candidate.check_model(num_layers, num_heads)
        self.reference.check_model(num_layers, num_heads)

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        state: Any,
        *,
        layer: jax.Array,
        lengths: jax.Array,
    ) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        """One layer: the candidate's output, both states, its stats plus the error.

        Args:
          q: [B, T, N, H]; k, v: [B, S, K, H]; state: (candidate, reference) states.
          layer: this layer's index; lengths: int32[B] real tokens.

        Returns:
          The candidate's out [B, T, N, H], the new states, and the candidate's stats with
          `attn_rel_error` float32[B] and `attn_rel_error_head` float32[B, N] added.
        """
        candidate_state, reference_state = state
        out, candidate_state, stats = self.candidate(
            q, k, v, candidate_state, layer=layer, lengths=lengths
        )
        expected, reference_state, _ = self.reference(
            q, k, v, reference_state, layer=layer, lengths=lengths
        )
        error, error_head = masked_relative_error(expected, out, lengths)
        stats = dict(stats) | {"attn_rel_error": error, "attn_rel_error_head": error_head}
        return out, (candidate_state, reference_state), stats
