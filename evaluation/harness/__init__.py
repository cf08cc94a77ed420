"""The accuracy harness: runs models with dense and sparse prefill and compares them.

Unlike the rest of `evaluation`, this subpackage needs JAX, `models` and `sharedsparse_jax`.
Modules, one concept each:

- `settings`: methods under planner variants (`default`, `small`, or overrides), labels, and
  the exact rule for a setting that keeps every block (dense by construction).
- `compare`: `ComparedAttention`, a PrefillAttention that propagates a sparse method's output
  and reports each layer's relative error to dense on the same q, k, v.
- `model_runs`: loading a model with its tokenizer and sharing table; scoring a text window
  (all-position log-likelihoods, last-position logits); answering a retrieval prompt.
- `store`: the results directory, one JSON Lines file per cell, appended unit by unit.
- `run`: `run_evaluation(options, store)`, resumable, within a time budget.
- `aggregate`: cell summaries with Wilson / Newcombe / bootstrap intervals against dense.
- `report`: the markdown tables and PNG figures.
- `environment`: hardware, software and commit of a run.

`sharedsparse-evaluate` (`sharedsparse_cli.evaluate`) is the command line over all of it.
"""

from evaluation.harness.aggregate import summarize_cell, summarize_store
from evaluation.harness.compare import ComparedAttention, masked_relative_error
from evaluation.harness.model_runs import EvalModel, load_eval_model, tiny_random_model
from evaluation.harness.options import EvalOptions, RunReport
from evaluation.harness.report import write_report
from evaluation.harness.run import run_evaluation
from evaluation.harness.settings import PRESET_VARIANTS, Setting, Variant, parse_variant
from evaluation.harness.store import CellKey, ResultStore

__all__ = [
    "PRESET_VARIANTS",
    "CellKey",
    "ComparedAttention",
    "EvalModel",
    "EvalOptions",
    "ResultStore",
    "RunReport",
    "Setting",
    "Variant",
    "load_eval_model",
    "masked_relative_error",
    "parse_variant",
    "run_evaluation",
    "summarize_cell",
    "summarize_store",
    "tiny_random_model",
    "write_report",
]
