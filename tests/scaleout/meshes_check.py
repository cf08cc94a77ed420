"""Sharded prefill, decode and planning on simulated CPU devices equal the single-device ones.

Run as a program (the device count is fixed when JAX starts):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.scaleout.meshes_check DIR

For meshes 1x8, 2x4 and 8x1 (data x model) it restores the tiny checkpoint in DIR into the
mesh's shards and checks: each parameter's sharding; prefill logits (dense and SharePrefill)
within float reordering of the single-device ones; every planner decision and count exactly
equal; the tokens decoded after prefill equal; and each layer's block masks and categories
planned under shard_map equal the single-device plan. Prints one line per mesh.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from models import DenseAttention, SamplingConfig, decode, load_checkpoint, prefill
from models.sharding import PARAMETER_AXES, ShardedAttention, make_mesh, partition_spec
from sharedsparse_jax import planner
from sharedsparse_jax.sharing import SharingState
from tests.scaleout import common

MESHES = ({"data": 1, "model": 8}, {"data": 2, "model": 4}, {"data": 8, "model": 1})
EXACT = ("num_", "density", "share_reason")


def check_stats(sharded: dict, single: dict) -> None:
    assert set(sharded) == set(single), (sorted(sharded), sorted(single))
    for name, want in single.items():
        got, want = np.asarray(sharded[name]), np.asarray(want)
        if name.startswith(EXACT):
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:  # compared values: float reordering only
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=name)


def check_plans(mesh, single_model) -> None:
    """Each layer's plan under shard_map equals the single-device plan, block for block."""
    rng = np.random.default_rng(3)
    shape = (common.BATCH, 256)
    lengths = jnp.asarray(rng.integers(100, 257, size=common.BATCH), jnp.int32)
    table, config = common.table(), common.PLANNER
    num_heads, num_kv = common.CONFIG.num_heads, common.CONFIG.num_kv_heads
    qs = jnp.asarray(rng.standard_normal((3, *shape, num_heads, 8)) * 2, jnp.float32)
    ks = jnp.asarray(rng.standard_normal((3, *shape, num_kv, 8)) * 2, jnp.float32)
    maps = jnp.asarray(rng.uniform(size=(3, common.BATCH, num_heads, 16, 16)), jnp.float32)
    maps = maps * jnp.tril(jnp.ones((16, 16)))

    def layers(qs, ks, maps, lengths, head_axis):
        state = SharingState.initial(qs.shape[1], table.num_shared, 16)
        masks, categories = [], []
        for layer in range(3):
            kwargs = dict(lengths=lengths, config=config, table=table, head_axis=head_axis)
            plan, state = planner.plan_layer(qs[layer], ks[layer], state, layer=layer, **kwargs)
            state = planner.absorb_pivot_maps(state, plan, maps[layer], layer=layer, **kwargs)
            masks.append(plan.block_mask)
            categories.append(plan.category)
        return jnp.stack(masks), jnp.stack(categories)

    heads = P(None, "data", "model")
    sharded = jax.jit(
        jax.shard_map(
            lambda q, k, m, n: layers(q, k, m, n, "model"),
            mesh=mesh,
            in_specs=(P(None, "data", None, "model"), P(None, "data", None, "model"), heads,
                      P("data")),
            out_specs=(heads, heads),
            check_vma=False,
        )
    )(qs, ks, maps, lengths)  # fmt: skip
    single = jax.jit(lambda q, k, m, n: layers(q, k, m, n, None))(qs, ks, maps, lengths)
    for got, want, what in zip(sharded, single, ("block masks", "categories"), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=what)
    assert len(np.unique(np.asarray(single[1]))) > 1, "the plans must mix head categories"


def main(directory: str) -> None:
    single_model = load_checkpoint(directory).model
    tokens = common.prompts()
    sampling = SamplingConfig(max_new_tokens=common.NEW_TOKENS)
    want = {}
    for name, attention in (("dense", DenseAttention()), ("shareprefill", common.attention())):
        result = prefill(single_model, tokens, attention=attention)
        want[name] = (result, decode(single_model, result, sampling=sampling))
    assert int(np.asarray(want["shareprefill"][0].stats["num_shared"]).sum()) > 0
    for shape in MESHES:
        mesh = make_mesh(shape)
        sharded_model = load_checkpoint(directory, mesh=mesh).model
        for name, param in vars(sharded_model.layers).items():
            if hasattr(param, "value"):
                assert param[...].sharding.spec == partition_spec(PARAMETER_AXES[name]), name
        for name, inner in (
            ("dense", DenseAttention()),
            ("shareprefill", common.attention("model")),
        ):
            result = prefill(sharded_model, tokens, attention=ShardedAttention(inner, mesh))
            single, single_decoded = want[name]
            np.testing.assert_allclose(
                np.asarray(result.logits), np.asarray(single.logits), rtol=0, atol=2e-5
            )
            check_stats(result.stats, single.stats)
            decoded = decode(sharded_model, result, sampling=sampling)
            np.testing.assert_array_equal(
                np.asarray(decoded.tokens), np.asarray(single_decoded.tokens)
            )
        check_plans(mesh, single_model)
        print(f"mesh data={shape['data']},model={shape['model']}: ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
