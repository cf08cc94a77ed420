"""Block-sparse attention restated in float64 NumPy, independent of the package's code."""

from __future__ import annotations

import numpy as np


def block_index_of_query(num_queries: int, num_keys: int, block_size: int) -> np.ndarray:
    """int[T]: the layout row (query block) of each query; rows align to absolute blocks."""
    positions = np.arange(num_keys - num_queries, num_keys)
    first_block = (num_keys - num_queries) // block_size
    return positions // block_size - first_block


def attention(q, k, v, block_mask, block_size, *, causal=True, scale=None):
    """Dense float64 attention where query t sees key s iff its row lists s's block.

    Args:
      q: [B, T, N, H]; k, v: [B, S, K, H]; block_mask: bool[B, N, Tb, Sb].

    Returns:
      out float64[B, T, N, H], lse float64[B, N, T], probabilities float64[B, N, T, S].
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, num_queries, num_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    group = num_heads // num_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    rows = block_index_of_query(num_queries, num_keys, block_size)
    key_blocks = np.arange(num_keys) // block_size
    visible = np.asarray(block_mask)[:, :, rows][:, :, :, key_blocks]  # [B, N, T, S]
    if causal:
        q_pos = np.arange(num_keys - num_queries, num_keys)
        visible = visible & (np.arange(num_keys)[None, :] <= q_pos[:, None])
    k_rep = np.repeat(k, group, axis=2)  # fine in a test oracle
    v_rep = np.repeat(v, group, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k_rep) * scale
    logits = np.where(visible, logits, -np.inf)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    probs = np.exp(logits - lse[..., None])
    out = np.einsum("bnts,bsnh->btnh", probs, v_rep)
    return out, lse, probs


def block_map(probs, num_keys, block_size):
    """float64[B, N, Tb, Sb]: mean over a query block's real rows of each key block's mass."""
    batch, num_heads, num_queries, _ = probs.shape
    rows = block_index_of_query(num_queries, num_keys, block_size)
    num_k_blocks = -(-num_keys // block_size)
    padded = np.zeros(probs.shape[:3] + (num_k_blocks * block_size,))
    padded[..., :num_keys] = probs
    per_block = padded.reshape(batch, num_heads, num_queries, num_k_blocks, block_size).sum(-1)
    num_rows = rows.max() + 1
    out = np.zeros((batch, num_heads, num_rows, num_k_blocks))
    for i in range(num_rows):
        out[:, :, i] = per_block[:, :, rows == i].mean(axis=2)
    return out
