"""The tests' attention oracle: softmax attention restated in float64 NumPy, independent of the
package's code.

`causal_softmax` and `causal_attention` are dense causal attention (GQA by repeating K/V, fine
in an oracle); `attention` lists keys by a block mask; `block_map` averages probabilities into
block maps. Only the mask value of empty rows (the package's MASK_VALUE convention) comes from
the package.
"""

from __future__ import annotations

import numpy as np

from pallas_kernels.block_sparse_attention import MASK_VALUE


def causal_softmax(logits: np.ndarray) -> np.ndarray:
    """float64[..., T, S] causal softmax: query t (the last T of S positions) sees keys <= t."""
    logits = np.asarray(logits, np.float64)
    num_queries, num_keys = logits.shape[-2:]
    positions = np.arange(num_keys - num_queries, num_keys)
    visible = np.arange(num_keys)[None, :] <= positions[:, None]
    logits = np.where(visible, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def causal_probabilities(q, k, *, scale=None) -> np.ndarray:
    """float64[B, N, T, S] causal attention probabilities; q [B, T, N, H], k [B, S, K, H]."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    group = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = np.einsum("btnh,bsnh->bnts", q, np.repeat(k, group, axis=2)) * scale
    return causal_softmax(logits)


def causal_attention(q, k, v, *, scale=None) -> np.ndarray:
    """float64[B, T, N, H] dense causal attention; q [B, T, N, H], k and v [B, S, K, H]."""
    group = q.shape[2] // k.shape[2]
    v_rep = np.repeat(np.asarray(v, np.float64), group, axis=2)
    return np.einsum("bnts,bsnh->btnh", causal_probabilities(q, k, scale=scale), v_rep)


def block_index_of_query(num_queries: int, num_keys: int, block_size: int) -> np.ndarray:
    """int[T]: the layout row (query block) of each query; rows align to absolute blocks."""
    positions = np.arange(num_keys - num_queries, num_keys)
    first_block = (num_keys - num_queries) // block_size
    return positions // block_size - first_block


def visible_keys(block_mask, num_queries, num_keys, block_size, *, causal=True) -> np.ndarray:
    """bool[B, N, T, S]: query t sees key s iff its row lists s's block (and s <= t if causal).

    Args:
      block_mask: bool[B, N, Tb, Sb]; the T queries are the last T of the S positions.
    """
    rows = block_index_of_query(num_queries, num_keys, block_size)
    key_blocks = np.arange(num_keys) // block_size
    visible = np.asarray(block_mask)[:, :, rows][:, :, :, key_blocks]
    if causal:
        q_pos = np.arange(num_keys - num_queries, num_keys)
        visible = visible & (np.arange(num_keys)[None, :] <= q_pos[:, None])
    return visible


def attention(q, k, v, block_mask, block_size, *, causal=True, scale=None):
    """Dense float64 attention where query t sees key s iff its row lists s's block.

    A row that sees no key has no softmax: its output and probabilities are 0 and its LSE is
    MASK_VALUE. A NaN among a row's visible scores makes its output, LSE and visible keys'
    probabilities NaN; keys a row does not see have probability 0.

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
    visible = visible_keys(block_mask, num_queries, num_keys, block_size, causal=causal)
    has_keys = visible.any(-1)  # [B, N, T]
    k_rep = np.repeat(k, group, axis=2)  # fine in a test oracle
    v_rep = np.repeat(v, group, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k_rep) * scale
    logits = np.where(visible, logits, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty rows: all -inf
        row_max = np.where(has_keys, logits.max(-1), 0.0)
        lse = np.log(np.exp(logits - row_max[..., None]).sum(-1)) + row_max
        probs = np.where(visible, np.exp(logits - lse[..., None]), 0.0)
    lse = np.where(has_keys, lse, np.float32(MASK_VALUE))  # as the float32 LSE holds it
    out = np.einsum("bnts,bsnh->btnh", probs, v_rep)
    return out, lse, probs


def block_map(probs, num_keys, block_size, lengths=None):
    """float64[B, N, Tb, Sb]: mean over a query block's real rows of each key block's mass.

    Args:
      probs: float64[B, N, T, S] from `attention`.
      lengths: int[B], real tokens per batch element (None: all S); queries at positions
        >= lengths[b] are end padding and take no part. A block with no real query gets zeros.
    """
    batch, num_heads, num_queries, _ = probs.shape
    rows = block_index_of_query(num_queries, num_keys, block_size)
    positions = np.arange(num_keys - num_queries, num_keys)
    lengths = np.full((batch,), num_keys) if lengths is None else np.asarray(lengths)
    num_k_blocks = -(-num_keys // block_size)
    padded = np.zeros(probs.shape[:3] + (num_k_blocks * block_size,))
    padded[..., :num_keys] = probs
    per_block = padded.reshape(batch, num_heads, num_queries, num_k_blocks, block_size).sum(-1)
    num_rows = rows.max() + 1
    out = np.zeros((batch, num_heads, num_rows, num_k_blocks))
    for b in range(batch):
        for i in range(num_rows):
            real = (rows == i) & (positions < lengths[b])
            if real.any():
                out[b, :, i] = per_block[b][:, real].mean(axis=1)
    return out
