"""ComparedAttention: the candidate's output propagates; the error matches a NumPy oracle."""

import numpy as np

from evaluation import metrics
from evaluation.harness.compare import ComparedAttention, masked_relative_error
from evaluation.harness.settings import Setting, parse_variant
from models.attention import DenseAttention
from sharedsparse_jax.attention import SharePrefillAttention
from tests.oracle import numpy_attention


def test_error_matches_oracle_and_candidate_output_propagates():
    rng = np.random.default_rng(7)
    batch, length, heads, kv_heads, dim = 2, 192, 4, 2, 16
    q = rng.standard_normal((batch, length, heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, length, kv_heads, dim)).astype(np.float32)
    lengths = np.array([192, 150], np.int32)
    variant = parse_variant(
        "t=small,block_size=32,dense_below=64,streaming_sink=32,streaming_window=32"
    )
    candidate = SharePrefillAttention(config=Setting(method="streaming", variant=variant).config())
    compared = ComparedAttention(candidate)

    out, _, stats = compared(
        q, k, v, compared.init_state(batch, length), layer=np.int32(0), lengths=lengths
    )
    alone, _, alone_stats = candidate(
        q, k, v, candidate.init_state(batch, length), layer=np.int32(0), lengths=lengths
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(alone))
    np.testing.assert_array_equal(np.asarray(stats["density"]), np.asarray(alone_stats["density"]))

    dense = numpy_attention.causal_attention(q, k, v)
    for b, n in enumerate(lengths):
        expected = metrics.relative_error(dense[b, :n], np.asarray(out)[b, :n])
        per_head = metrics.relative_error(dense[b, :n], np.asarray(out)[b, :n], keep_axes=(1,))
        assert expected > 0.05  # streaming with a 64-token reach really differs
        np.testing.assert_allclose(float(stats["attn_rel_error"][b]), expected, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(stats["attn_rel_error_head"][b]), per_head, rtol=1e-4)


def test_padding_rows_are_left_out_and_dense_has_no_error():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((1, 10, 2, 4)).astype(np.float32)
    cand = ref.copy()
    cand[:, 7:] += 100.0  # garbage in padding rows only
    error, per_head = masked_relative_error(ref, cand, np.array([7], np.int32))
    assert float(error[0]) == 0.0 and np.all(np.asarray(per_head) == 0.0)
    compared = ComparedAttention(DenseAttention())
    q = rng.standard_normal((1, 64, 4, 8)).astype(np.float32)
    k = rng.standard_normal((1, 64, 2, 8)).astype(np.float32)
    _, _, stats = compared(q, k, k, compared.init_state(1, 64), layer=0, lengths=np.array([64]))
    assert float(stats["attn_rel_error"][0]) == 0.0
