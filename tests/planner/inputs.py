"""Structured q/k for planner tests: heads whose attention has a known shape.

Each kv head is given an archetype, and its query heads follow it with a little noise, so heads
of one GQA group are near-copies and heads of one archetype in different layers look alike:
  - `topic`: the prompt is cut into chunks with a topic each, and queries attend to earlier
    chunks of their own topic (an irregular pattern a vertical-slash pattern misses), plus a
    sink and a local band; the last chunk's topic is unique, so the last block attends to the
    sink and its neighbours only. Pivot material: sharing pays.
  - `local`: a sink and a local band, which a vertical-slash pattern explains (sharing is
    refused by the tau_fb test).
  - `pooled`: every query looks along one direction and keys score by block, so the pooled
    estimate is right (query-aware heads).
  - `stripes`: a sink and a few vertical stripes.
"""

from __future__ import annotations

import numpy as np

from tests.oracle import numpy_attention

ARCHETYPES = ("topic", "local", "pooled", "stripes")
# Four layers of kv-head archetypes that the planner tests share: every layer has a topic head
# (sharing pays), a local or stripes one (a vertical-slash pattern explains it) and, in the
# first three, a pooled one (query-aware).
STRUCTURED_LAYERS = (
    ("topic", "local", "pooled"),
    ("topic", "stripes", "pooled"),
    ("topic", "local", "pooled"),
    ("topic", "stripes", "local"),
)


def positional_features(positions: np.ndarray, num_pairs: int) -> np.ndarray:
    """[len, 2 * num_pairs] cos/sin features whose dot products peak at equal positions."""
    frequencies = 0.6 / (1.7 ** np.arange(num_pairs))
    angles = positions[:, None] * frequencies[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)


def layer_inputs(
    rng: np.random.Generator,
    archetypes: list[str],
    *,
    length: int,
    group: int,
    head_dim: int,
    block_size: int,
    topics: np.ndarray,
    noise: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """q [T, N, H] and k [T, K, H] (float64) for one layer; N = len(archetypes) * group.

    Feature pairs are scaled so that a pair's contribution to a logit (q . k / sqrt(H)) is the
    given strength times the features' dot product.
    """
    positions = np.arange(length)

    def strength(logit):
        return np.sqrt(logit * np.sqrt(head_dim))

    q_heads, k_heads = [], []
    for kind in archetypes:
        q_base = 0.3 * rng.standard_normal((length, head_dim))
        k_base = 0.3 * rng.standard_normal((length, head_dim))
        if kind in ("topic", "local", "stripes"):
            # Topic heads lean on the sink (so their last block is all sink), the others on
            # their neighbours.
            local_logit, sink_logit = (3.0, 13.0) if kind == "topic" else (9.0, 7.0)
            local = positional_features(positions, 4) / 2.0  # unit self-similarity
            q_base[:, :8] += strength(local_logit) * local
            k_base[:, :8] += strength(local_logit) * local
            q_base[:, 8] += strength(sink_logit)
            k_base[0, 8] += strength(sink_logit)
        if kind == "topic":
            chunk = 2 * block_size
            basis = np.linalg.qr(rng.standard_normal((head_dim - 10, head_dim - 10)))[0]
            topic_of = topics[positions // chunk]
            topic_vector = np.where((topic_of >= 0)[:, None], basis[topic_of], 0.0)
            q_base[:, 10:] += strength(8.0) * topic_vector
            k_base[:, 10:] += strength(8.0) * topic_vector
        elif kind == "stripes":
            stripes = rng.choice(np.arange(1, length - 2 * block_size), size=3, replace=False)
            q_base[:, 9] += strength(7.0)
            k_base[stripes, 9] += strength(7.0)
        elif kind == "pooled":
            direction = rng.standard_normal(head_dim)
            direction /= np.linalg.norm(direction)
            block_score = rng.uniform(-1.0, 1.0, size=-(-length // block_size))
            q_base = 0.2 * rng.standard_normal((length, head_dim)) + strength(4.0) * direction
            k_base = (
                0.2 * rng.standard_normal((length, head_dim))
                + strength(4.0) * block_score[positions // block_size, None] * direction
            )
        k_heads.append(k_base)
        for _ in range(group):
            q_heads.append(q_base + noise * rng.standard_normal(q_base.shape))
    return np.stack(q_heads, axis=1), np.stack(k_heads, axis=1)


def chunk_topics(
    rng: np.random.Generator, length: int, block_size: int, num_topics: int = 3
) -> np.ndarray:
    """A topic per chunk of two blocks; the last chunk has none (-1)."""
    num_chunks = -(-length // (2 * block_size))
    topics = rng.integers(0, num_topics, size=num_chunks)
    topics[-1] = -1
    return topics


def dense_block_maps(q: np.ndarray, k: np.ndarray, block_size: int) -> np.ndarray:
    """float64[N, nb, nb]: the exact causal block-averaged attention maps of every head."""
    probs = numpy_attention.causal_probabilities(q[None], k[None])
    return numpy_attention.block_map(probs, q.shape[0], block_size)[0]


def prompt_layers(
    rng: np.random.Generator,
    length: int,
    archetypes=STRUCTURED_LAYERS,
    *,
    group: int = 2,
    head_dim: int = 32,
    block_size: int = 16,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer q [n, N, H], k and v [n, K, H] (float64) of one structured prompt of `length`
    tokens, one topic per two-block chunk for all its layers."""
    topics = chunk_topics(rng, length, block_size)
    layers = []
    for kinds in archetypes:
        q, k = layer_inputs(
            rng, list(kinds), length=length, group=group, head_dim=head_dim,
            block_size=block_size, topics=topics,
        )  # fmt: skip
        layers.append((q, k, rng.standard_normal(k.shape)))
    return layers
