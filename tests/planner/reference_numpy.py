"""The reference SharePrefill planner restated in NumPy with plain loops.

Written from ../shared/reference/algorithm.md section 3: batch 1, one layer after another, one
head after another, block sets as Python sets of (row, column), flat-index lists where the
reference uses them. `quirks=True` is the reference as it runs; `quirks=False` applies the
documented fixes, each marked `# fix:` below:
  - vs_ratio over unique, causal-valid blocks (not the inflated list sum);
  - slash profile pooled by exact block offset (not binned from token 0);
  - Jensen-Shannon terms with 0 * log 0 = 0 (no NaN decides);
  - a pivot row that never reaches gamma keeps every block (not only its largest);
  - gamma = 1 keeps every entry (a float running sum may stop a rounding error short);
  - tau_fb = 1 lets every pivot share (a vs_ratio of exactly 1 included).
Independent of the package: it imports nothing from it.
"""

from __future__ import annotations

import math

import numpy as np

DENSE, PIVOT, SHARED, QUERY_AWARE, VERTICAL_SLASH = (
    "dense",
    "pivot",
    "shared",
    "query_aware",
    "vertical_slash",
)


def sqrt_js(p, q, quirks):
    m = (p + q) / 2
    if quirks:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
            return np.sqrt(value)
    total = 0.0  # fix: 0 * log 0 = 0
    for x in (p, q):
        for xi, mi in zip(x, m, strict=True):
            if xi > 0:
                total += 0.5 * xi * math.log(xi / mi)
    return math.sqrt(max(total, 0.0))


def cover_count(x, target):
    """How many of the largest entries keep a running sum <= target, plus one."""
    running = np.cumsum(np.sort(x)[::-1])
    return int(np.sum(running <= target)) + 1


def top_indices(x, k):
    """Indices of the k largest entries, ties broken toward the lower index."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    return order[:k]


class ReferencePlanner:
    def __init__(
        self,
        clusters,
        shared_clusters,
        *,
        block_size,
        gamma,
        tau_sim,
        tau_fb,
        tau_qa,
        min_budget,
        max_budget=None,
        dense_below,
        quirks,
    ):
        self.cluster_of = {}
        for cluster_id, members in clusters.items():
            for layer, head in members:
                self.cluster_of[(layer, head)] = cluster_id
        self.shared = set(shared_clusters)
        self.bs = block_size
        self.gamma, self.tau_sim, self.tau_fb, self.tau_qa = gamma, tau_sim, tau_fb, tau_qa
        self.b_min = math.ceil(min_budget / block_size)
        self.b_max = None if max_budget is None else math.ceil(max_budget / block_size)
        self.dense_below = dense_below
        self.quirks = quirks
        # Per shared cluster, for this forward pass.
        self.pivot_head = {}
        self.pattern = {}
        self.pivot_map = {}
        self.pivot_vertical = {}
        self.pivot_slash = {}
        self.pivot_vs = {}  # (vertical columns, slash offsets) of the pivot's own pattern
        self.vs_ratio = {}
        self.pending = {}  # head -> cluster of this layer's pivots, until absorb()

    def estimate(self, q, k, n):
        """Per head: vertical and slash profiles (block-pooled), budgets, query-aware flag."""
        bs = self.bs
        num_heads, head_dim = q.shape[1], q.shape[2]
        group = num_heads // k.shape[1]
        nb = math.ceil(n / bs)
        b_max = nb if self.b_max is None else min(self.b_max, nb)
        last_q = q[n - bs : n] / math.sqrt(head_dim)
        out = []
        for h in range(num_heads):
            kh = k[:n, h // group]
            logits = last_q[:, h] @ kh.T  # [bs, n]
            for i in range(bs):
                logits[i, n - bs + i + 1 :] = -np.inf
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            vertical_tok = probs.mean(0)
            slash_tok = np.zeros(n)  # index t <-> token offset n - 1 - t
            for t in range(n):
                for i in range(bs):
                    j = i + t - (bs - 1)
                    if 0 <= j < n:
                        slash_tok[t] += probs[i, j] / bs

            def budget(x):
                blocks = cover_count(x, self.target(1.0)) // bs + 1
                return min(max(blocks, self.b_min), b_max)

            vertical = np.zeros(nb)
            for j in range(n):
                vertical[j // bs] += vertical_tok[j]
            slash = np.zeros(nb)  # index c <-> block offset nb - 1 - c
            for t in range(n):
                if self.quirks:
                    slash[t // bs] += slash_tok[t]
                else:  # fix: exact block offset of the token offset
                    slash[nb - 1 - (n - 1 - t) // bs] += slash_tok[t]
            key_mean = np.stack([kh[c * bs : (c + 1) * bs].mean(0) for c in range(nb)])
            pooled_logits = key_mean @ last_q[:, h].mean(0)
            pooled = np.exp(pooled_logits - pooled_logits.max())
            pooled /= pooled.sum()
            out.append(
                {
                    "vertical": vertical,
                    "slash": slash,
                    "num_vertical": budget(vertical_tok),
                    "num_slash": budget(slash_tok),
                    "query_aware": bool(sqrt_js(pooled, vertical, self.quirks) < self.tau_qa),
                }
            )
        return out

    def fallback_bound(self):
        if self.tau_fb >= 1.0 and not self.quirks:  # fix: tau_fb = 1 disables the test
            return np.inf
        return self.tau_fb

    def target(self, scale):
        if self.gamma >= 1.0 and not self.quirks:  # fix: gamma = 1 keeps everything
            return np.inf
        return self.gamma * scale

    def vertical_slash_blocks(self, vertical, slash, num_vertical, num_slash, nb):
        """(set of (r, c), flat list with duplicates and invalid -> 0, columns, offsets)."""
        vertical, slash = vertical.copy(), slash.copy()
        vertical[0] = np.inf
        slash[nb - 1] = np.inf
        columns = top_indices(vertical, min(num_vertical, nb))
        offsets = [nb - 1 - c for c in top_indices(slash, min(num_slash, nb))]
        blocks, flat = set(), []
        for d in offsets:
            for r in range(nb):
                if r + d < nb:
                    blocks.add((r + d, r))
                    flat.append((r + d) * nb + r)
                else:
                    flat.append(0)
        for c in columns:
            for r in range(nb):
                if r >= c:
                    blocks.add((r, c))
                    flat.append(r * nb + c)
                else:
                    flat.append(0)
        return blocks, flat, columns, offsets

    def plan_layer(self, layer, q, k, n):
        """Block sets and categories of every head of one layer, for one prompt.

        Args:
          q: [n, N, H]; k: [n, K, H] (float64).
        """
        bs = self.bs
        num_heads, head_dim = q.shape[1], q.shape[2]
        group = num_heads // k.shape[1]
        nb = math.ceil(n / bs)
        causal = {(r, c) for r in range(nb) for c in range(r + 1)}
        self.pending = {}
        if n < self.dense_below:
            return [set(causal) for _ in range(num_heads)], [DENSE] * num_heads
        est = self.estimate(q, k, n)
        blocks = [set() for _ in range(num_heads)]
        category = [VERTICAL_SLASH] * num_heads
        budgets = [(e["num_vertical"], e["num_slash"]) for e in est]
        for h in range(num_heads):
            if est[h]["query_aware"]:
                category[h] = QUERY_AWARE
                continue
            cluster = self.cluster_of.get((layer, h))
            if cluster not in self.shared:
                continue
            if cluster not in self.pivot_head:  # the first eligible member: the pivot
                self.pivot_head[cluster] = (layer, h)
                self.pending[h] = cluster
                blocks[h] = set(causal)
                category[h] = PIVOT
                self.pivot_vertical[cluster] = est[h]["vertical"].copy()
                self.pivot_slash[cluster] = est[h]["slash"].copy()
                self.pivot_vs[cluster] = self.vertical_slash_blocks(
                    est[h]["vertical"], est[h]["slash"], *budgets[h], nb
                )
            elif cluster in self.pattern:  # the pivot is from an earlier layer
                if cluster not in self.vs_ratio:
                    self.vs_ratio[cluster] = self.coverage(cluster, nb)
                d_v = sqrt_js(self.pivot_vertical[cluster], est[h]["vertical"], self.quirks)
                d_s = sqrt_js(self.pivot_slash[cluster], est[h]["slash"], self.quirks)
                if (
                    d_v < self.tau_sim
                    and d_s < self.tau_sim
                    and self.vs_ratio[cluster] < self.fallback_bound()
                ):
                    blocks[h] = set(self.pattern[cluster])
                    category[h] = SHARED
        for h in range(num_heads):
            n_v, n_s = budgets[h]
            if category[h] in (QUERY_AWARE, SHARED):
                n_v = n_s = self.b_min
            vs, _, _, _ = self.vertical_slash_blocks(
                est[h]["vertical"], est[h]["slash"], n_v, n_s, nb
            )
            blocks[h] |= vs
        for h in range(num_heads):
            if category[h] != QUERY_AWARE:
                continue
            kh = k[:n, h // group]
            key_mean = np.stack([kh[c * bs : (c + 1) * bs].mean(0) for c in range(nb)])
            query_mean = np.stack([q[r * bs : (r + 1) * bs, h].mean(0) for r in range(nb)])
            logits = query_mean @ key_mean.T / math.sqrt(head_dim)
            probs = np.zeros((nb, nb))
            for r in range(nb):
                row = np.exp(logits[r, : r + 1] - logits[r, : r + 1].max())
                probs[r, : r + 1] = row / row.sum()
            flat = probs.reshape(-1)
            order = sorted(range(nb * nb), key=lambda i: (-flat[i], i))
            running = 0.0
            blocks[h].add((0, 0))  # the reference pads the cut entries with flat index 0
            for i in order:
                running += flat[i]
                if running > self.target(nb):
                    break
                r, c = divmod(i, nb)
                if c <= r:  # a zero above the diagonal (kept when gamma = 1) is never attended
                    blocks[h].add((r, c))
        return blocks, category

    def coverage(self, cluster, nb):
        """vs_ratio: how much of the pivot's map its own vertical-slash pattern covers."""
        block_map = self.pivot_map[cluster]
        blocks, flat, _, _ = self.pivot_vs[cluster]
        if self.quirks:
            covered = sum(block_map.reshape(-1)[i] for i in flat)
        else:  # fix: unique, causal-valid blocks
            covered = sum(block_map[r, c] for r, c in blocks)
        return covered / block_map.sum()

    def absorb(self, block_maps):
        """Builds this layer's pivots' patterns from their exact maps ([N, nb, nb] float64)."""
        for h, cluster in self.pending.items():
            block_map = block_maps[h]
            nb = block_map.shape[0]
            pattern = {(0, 0)}
            for r in range(nb):
                row = block_map[r]
                order = sorted(range(nb), key=lambda c: (-row[c], c))
                running = np.cumsum(row[order])
                reached = np.nonzero(running >= self.target(1.0))[0]
                if len(reached):
                    count = reached[0] + 1
                elif self.quirks:
                    count = 1
                else:  # fix: a row that never reaches gamma keeps all its blocks
                    count = nb
                pattern |= {(r, c) for c in order[:count] if row[c] > 0}
            self.pattern[cluster] = pattern
            self.pivot_map[cluster] = block_map
        self.pending = {}
