"""SharePrefill: estimation, pivot selection and pattern sharing for sparse prefill.

In your own model's layer loop (docs/usage.md, "SharePrefill in your own model"):

    import sharedsparse_jax as ssp

    state = ssp.init_sharing_state(B, T, config=config, table=table)
    for layer in range(L):
        ...  # q [B, T, N, H], k, v [B, T, K, H] after RoPE
        out, state, stats = ssp.shareprefill_attention(
            q, k, v, state, layer=layer, lengths=lengths, config=config, table=table
        )
"""

from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import METHODS, SharePrefillConfig
from sharedsparse_jax.functional import init_sharing_state, shareprefill_attention
from sharedsparse_jax.planner import CATEGORIES
from sharedsparse_jax.sharing import SharingState, SharingTable
from sharedsparse_jax.stats import summarize_stats

__all__ = [
    "CATEGORIES",
    "METHODS",
    "SharePrefillAttention",
    "SharePrefillConfig",
    "SharingState",
    "SharingTable",
    "init_sharing_state",
    "shareprefill_attention",
    "summarize_stats",
]
