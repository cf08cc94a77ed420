"""The harness end to end on a tiny random model: run, resume, extend, summarize, report, CLI."""

import json

import pytest

from evaluation.harness.aggregate import summarize_store
from evaluation.harness.model_runs import tiny_random_model
from evaluation.harness.options import EvalOptions
from evaluation.harness.report import _runs_of, write_report
from evaluation.harness.run import run_evaluation
from evaluation.harness.settings import PRESET_VARIANTS, parse_variant
from evaluation.harness.store import ResultStore
from sharedsparse_cli import evaluate as evaluate_cli

TEXT = " ".join(f"Sentence {i % 53} of a tale, told plainly." for i in range(800))
MODEL = "tiny-random"


def _options(samples: int) -> EvalOptions:
    tiny = parse_variant("tiny=small,block_size=32,min_budget=64,dense_below=64")
    return EvalOptions(
        models=[MODEL],
        tasks=["text", "passkey"],
        text_lengths={MODEL: [256]},
        retrieval_lengths={MODEL: [320]},
        methods=["dense", "shareprefill", "flexprefill"],
        # `default` keeps every block of these short inputs: reused, never run.
        variants=[tiny, PRESET_VARIANTS["default"]],
        windows=2,
        samples={"default": samples},
        kl_positions=8,
        max_new_tokens=4,
        documents={"first": TEXT[:14000], "second": TEXT[14000:]},
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    model = tiny_random_model()
    first = run_evaluation(_options(2), ResultStore(root), models={MODEL: model})
    again = run_evaluation(_options(2), ResultStore(root), models={MODEL: model})
    more = run_evaluation(_options(3), ResultStore(root), models={MODEL: model})
    return root, first, again, more


def test_runs_only_what_is_needed_and_resumes(run):
    _, first, again, more = run
    # Per unit: dense and flexprefill@tiny run; shareprefill@tiny copies flexprefill (no
    # table), and the three @default settings copy dense (dense by construction).
    # 5 settings (dense, 2 methods x 2 variants) x 4 units (2 windows, 2 samples).
    assert (first.units_run, first.units_reused) == (2 * 4, 3 * 4)
    assert again.units_run == 0 and again.units_done_before == 5 * 4
    assert more.units_run == 2 and more.units_reused == 3
    assert more.units_done_before == 5 * 2 + 5 * 2


def test_summaries(run):
    root = run[0]
    by_key = {(s["task"], s["setting"]): s for s in summarize_store(ResultStore(root))}
    assert len(by_key) == 2 * 5
    dense, flex = by_key[("text", "dense")], by_key[("text", "flexprefill@tiny")]
    assert dense["n"] == 2 and dense["tokens_scored"] == 2 * 255
    # A random model over 257 bytes, with peaked logits (models.random_weights): far from any
    # trained model, within an order of magnitude of the vocabulary.
    assert 25 < dense["perplexity"] < 2570
    assert flex["density"] < 1.0 and flex["heads"]["query_aware"] + flex["heads"][
        "vertical_slash"
    ] == pytest.approx(1.0)
    assert len(flex["attn_rel_error_per_layer"]) == 2 and flex["attn_rel_error_mean"] > 0
    assert flex["nll_diff_vs_dense"]["n"] == 2 and flex["kl_mean"] >= 0
    share = by_key[("text", "shareprefill@tiny")]
    assert share["same_as"] == "flexprefill@tiny" and share["perplexity"] == flex["perplexity"]
    copy = by_key[("passkey", "flexprefill@default")]
    assert copy["dense_by_construction"] == 1.0 and copy["density"] == 1.0
    passkey = by_key[("passkey", "flexprefill@tiny")]
    assert passkey["n"] == 3 and passkey["accuracy"]["method"] == "wilson"
    assert passkey["diff_vs_dense"]["n"] == 3 and 300 < passkey["num_tokens_mean"] <= 320


def test_report_and_figures(run, tmp_path):
    store = ResultStore(run[0])
    written = write_report(store, summarize_store(store), tmp_path / "r.md", tmp_path / "figures")
    text = (tmp_path / "r.md").read_text()
    assert "| 256 | flexprefill@tiny | 2 |" in text
    assert "shareprefill@tiny (=flexprefill@tiny)" in text and "(=dense)" in text
    assert {p.name for p in written if p.suffix == ".png"} == {
        "eval_tiny-random_ppl_vs_density.png",
        "eval_tiny-random_layer_error.png",
        "eval_tiny-random_retrieval_vs_density.png",
    }


def _script():
    return evaluate_cli


def test_cli_parsing_and_report_only(run, tmp_path):
    script = _script()
    assert script.parse_length("4K") == 4096 and script.parse_length("1000") == 1000
    assert script.parse_duration("90m") == 5400 and script.parse_duration("1.5h") == 5400
    assert script.parse_samples(["20", "passkey=50"]) == {"default": 20, "passkey": 50}
    args = script.build_parser().parse_args(["--smoke"])
    script.apply_smoke(args)
    assert args.checkpoint == [script.SMOLLM2] and args.out_dir is not None
    report = tmp_path / "report.md"
    code = script.main(
        [
            "--report-only",
            "--out-dir",
            str(run[0]),
            "--report",
            str(report),
            "--figures",
            str(tmp_path / "figs"),
        ]
    )
    assert code == 0 and report.is_file()
    assert len(json.loads((run[0] / "summary.json").read_text())) == 10


def test_a_models_caption_names_only_the_invocations_that_could_run_it():
    runs = [
        {"argv": ["--models", "a", "b", "--tasks", "text"], "id": 1},  # an older log's option
        {"argv": ["--tasks", "text", "--checkpoint", "dir/b"], "id": 2},
        {"argv": ["--tasks", "passkey"], "id": 3},  # no --models: every model
        {"argv": ["--checkpoint", "b", "--yarn-factor", "4.0"], "id": 4},
    ]
    assert [r["id"] for r in _runs_of(runs, "a")] == [1, 3]
    assert [r["id"] for r in _runs_of(runs, "b")] == [1, 2, 3]
    assert [r["id"] for r in _runs_of(runs, "b+yarn4")] == [4]
    assert [r["id"] for r in _runs_of(runs, "text")] == [3]  # a task name is not a model


def test_yarn_factor_results_never_mix_with_the_trained_context(tmp_path):
    """The tiny model (8K context) loaded plain and with YaRN factor 2: separate cells and
    cached logits; beyond 8K the plain model is skipped."""
    options = dict(
        models=[MODEL],
        tasks=["text"],
        retrieval_lengths={},
        methods=["dense"],
        variants=[],
        windows=1,
        kl_positions=8,
        documents={"first": TEXT},
    )
    store = ResultStore(tmp_path)
    plain = run_evaluation(EvalOptions(**options, text_lengths={MODEL: [256, 9000]}), store)
    assert plain.units_run == 1
    assert plain.skipped == ["tiny-random text L9000: beyond the model's context (8192 tokens)"]
    extended = run_evaluation(
        EvalOptions(**options, text_lengths={MODEL: [256]}, yarn_factor=2), store
    )
    assert extended.units_run == 1 and extended.units_done_before == 0
    cells = {cell.model: cell for cell in store.cells()}
    assert set(cells) == {"tiny-random", "tiny-random+yarn2"}
    assert store.parameters(cells["tiny-random+yarn2"])["model"] == "tiny-random+yarn2"
    (plain_record,) = store.units(cells["tiny-random"]).values()
    (yarn_record,) = store.units(cells["tiny-random+yarn2"]).values()
    assert plain_record["unit"] == yarn_record["unit"]
    assert plain_record["nll_sum"] != yarn_record["nll_sum"]  # YaRN changes every rope frequency
    unit = plain_record["unit"]
    for model in cells:
        assert store.load_dense_logits(model, 256, unit) is not None
    with pytest.raises(ValueError, match="yarn_factor must be above 1"):
        EvalOptions(**options, text_lengths={}, yarn_factor=1.0)


def test_cli_passes_the_yarn_factor_on():
    script = _script()
    argv = ["--checkpoint", "tiny-random", "--tasks", "text", "--yarn-factor", "4"]
    assert script.build_options(script.build_parser().parse_args(argv)).yarn_factor == 4.0


def test_runs_a_checkpoint_given_by_its_path(tmp_path):
    """`--checkpoint path/to/model`: any source loads (here a converted directory whose byte
    tokenizer has no chat template), named after its directory, with no shipped table."""
    from tests.integration import helpers

    source = str(helpers.save_tiny_checkpoint(tmp_path / "my-model"))
    options = EvalOptions(
        models=[source],
        tasks=["text", "passkey"],
        text_lengths={source: [256]},
        retrieval_lengths={source: [320]},
        methods=["dense"],
        variants=[],
        windows=1,
        samples={"default": 1},
        kl_positions=8,
        max_new_tokens=4,
        documents={"first": TEXT},
    )
    store = ResultStore(tmp_path / "results")
    report = run_evaluation(options, store)
    assert report.units_run == 2
    assert {(cell.model, cell.task) for cell in store.cells()} == {
        ("my-model", "text"), ("my-model", "passkey")
    }  # fmt: skip


def test_one_window_reports_no_interval():
    from evaluation.harness import report

    one = {"value": 0.04, "low": 0.04, "high": 0.04, "n": 1, "method": "bootstrap"}
    two = one | {"low": 0.01, "high": 0.07, "n": 2}
    assert report._interval(one, scale=1.0, digits=3) == "+0.040 [one window: no interval]"
    assert report._interval(two, scale=1.0, digits=3) == "+0.040 [+0.010, +0.070]"
    wilson = {"value": 1.0, "low": 0.2, "high": 1.0, "n": 1, "method": "wilson"}
    assert report._interval(wilson) == "+100.0 [+20.0, +100.0]"
