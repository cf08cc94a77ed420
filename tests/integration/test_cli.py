"""The main job's CLI (sharedsparse-prefill) and the prefill latency benchmark, on tiny models."""

from __future__ import annotations

import argparse
import dataclasses
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from benchmarks import prefill_latency, timing
from models import DenseAttention, parameter_shapes, prefill
from models.checkpoint import read_config
from models.compile_time import union_length
from models.config import RopeConfig
from models.fetch import builtin_checkpoint
from models.tokenizer import Tokenizer
from sharedsparse_cli import prefill as prefill_cli
from sharedsparse_jax import tables
from sharedsparse_jax.sharing import SharingTable
from tests.integration import helpers

PROMPT = (
    "Mr. Bennet was so odd a mixture of quick parts, sarcastic humour, reserve, and caprice, "
    "that the experience of three-and-twenty years had been insufficient to make his wife "
    "understand his character. Her mind was less difficult to develop. She was a woman of mean "
    "understanding, little information, and uncertain temper. What was the business of her life?"
)


@pytest.fixture(scope="module")
def script():
    return prefill_cli


def test_cli_answers_a_prompt_file(script, tmp_path, capsys):
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    table = helpers.write_tiny_table(tmp_path / "table.json")
    out_dir = tmp_path / "run"
    # Planner knobs small enough that the ~360-token prompt is planned sparsely.
    records = script.main(
        [
            "--checkpoint", str(checkpoint), "--prompt-file", str(prompt), "--answer", "news",
            "--method", "dense", "shareprefill", "--table", str(table), "--block-size", "32",
            "--dense-below", "64", "--min-budget", "32", "--tau-qa", "0", "--max-new-tokens", "3",
            "--out-dir", str(out_dir),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "model: tiny-llama (llama, 4 layers, 6/2 heads, float32)" in printed
    assert "in the chat template" in printed
    assert f"sharing table: {table}: 5 clusters, 3 shared" in printed
    assert [r["method"] for r in records] == ["dense", "shareprefill"]
    for record in records:
        assert record["correct"] in (True, False)
        assert 1 <= record["new_tokens"] <= 3
        assert f"{record['method']:>14} answer: {record['answer']!r}" in printed
        assert record["prefill_s"] >= 0 and record["compile_s"] > 0
    sparse = records[1]
    assert 0 < sparse["density"] < 1
    assert sparse["num_pivot"] == 3 and sparse["num_query_aware"] == 0
    total = sum(sparse[f"num_{name}"] for name in ("pivot", "shared", "vertical_slash"))
    assert total == 4 * 6
    assert (
        json.loads((out_dir / "prefill.json").read_text())["records"][1]["density"]
        == sparse["density"]
    )
    # Why each shared-cluster head did or did not share: one line per reason with a count.
    reasons = {name: entry["count"] for name, entry in sparse["sharing"].items()}
    assert reasons["pivot"] == 3 and sum(reasons.values()) > 3
    assert "why shared-cluster heads did or did not share" in printed
    for name, count in reasons.items():
        assert (f"  {name:<17} {count:g}" in printed) == (count > 0), name


def test_cli_on_a_mesh_answers_as_on_one_device(script, tmp_path):
    """--mesh data=1,model=2 over the test session's CPU devices: the same answers and plans."""
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    table = helpers.write_tiny_table(tmp_path / "table.json")
    common = [
        "--checkpoint", str(checkpoint), "--prompt-file", str(prompt), "--method", "dense",
        "shareprefill", "--table", str(table), "--block-size", "32", "--dense-below", "64",
        "--min-budget", "32", "--tau-qa", "0", "--max-new-tokens", "3",
    ]  # fmt: skip
    single = script.main(common)
    sharded = script.main([*common, "--mesh", "data=1,model=2"])
    for one, many in zip(single, sharded, strict=True):
        assert one["answer"] == many["answer"]
        for key in ("density", "num_pivot", "num_shared", "num_vertical_slash"):
            assert one.get(key) == many.get(key), key
    with pytest.raises(SystemExit):
        script.main([*common, "--mesh", "data=2"])  # one prompt: no data parallelism


def test_cli_tables(script, tmp_path):
    table, line = script.resolve_table(None, "tiny-llama", 4, 6)
    assert table is None and "no sharing table is shipped for tiny-llama" in line
    table, line = script.resolve_table("none", "smollm2-135m-instruct", 30, 9)
    assert table is None and "--table none" in line
    table, line = script.resolve_table("builtin", "qwen2.5-coder-0.5b-instruct", 24, 14)
    lengths = ", ".join(str(length) for length in table.metadata["lengths"])
    assert line.endswith(f"(calibrated on qwen2.5-coder-0.5b-instruct at {lengths} tokens)")
    path = helpers.write_tiny_table(tmp_path / "table.json")
    table, _ = script.resolve_table(str(path), "tiny-llama", 4, 6)
    assert table.num_shared == 3
    with pytest.raises(ValueError, match="layer 3 out of range"):
        script.resolve_table(str(path), "tiny-llama", 3, 6)


def test_cli_extends_the_context_with_yarn(script, tmp_path, capsys):
    """A prompt past the model's context is refused, naming --yarn-factor; with it, it runs."""
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama", max_position_embeddings=256)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    common = [
        "--checkpoint", str(checkpoint), "--prompt-file", str(prompt), "--method", "dense",
        "--max-new-tokens", "2",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match=r"context of 256 tokens \(--yarn-factor extends it\)"):
        script.main(common)
    (record,) = script.main([*common, "--yarn-factor", "2"])
    printed = capsys.readouterr().out
    assert "model: tiny-llama+yarn2 (llama, 4 layers" in printed
    assert "YaRN x2: context 512 tokens" in printed
    assert record["model"] == "tiny-llama+yarn2" and record["prompt_tokens"] > 256


def test_cli_refuses_yarn_on_a_scaled_rope(script, tmp_path):
    checkpoint = helpers.save_tiny_checkpoint(
        tmp_path / "tiny-llama", rope=RopeConfig(rope_type="linear", factor=2.0)
    )
    with pytest.raises(SystemExit, match="cannot be loaded: the model already uses 'linear' rope"):
        script.resolve_checkpoint(str(checkpoint), None, yarn_factor=2.0)


def test_cli_refuses_a_missing_checkpoint(script, tmp_path):
    with pytest.raises(SystemExit, match="no such file or directory"):
        script.resolve_checkpoint(str(tmp_path / "nowhere"), None)


def test_builtin_question_holds_its_answer(script):
    tokenizer = Tokenizer.from_directory(builtin_checkpoint("smollm2-135m-instruct"))
    args = argparse.Namespace(prompt_file=None, context_tokens=600, needle_depth=0.95)
    question = script.build_question(args, SimpleNamespace(tokenizer=tokenizer))
    text = tokenizer.decode(question.token_ids)
    assert len(question.expected) == 5 and question.expected.isdigit()
    assert f"The pass key is {question.expected}." in text
    assert text.startswith("<|im_start|>user\n") and text.endswith("The pass key is")
    assert 560 <= len(question.token_ids) <= 600
    # Near the end: the needle sits in the last tenth of the prompt.
    assert text.index(question.expected) > 0.85 * len(text)


def test_benchmark_dry_run(tmp_path, capsys):
    out = tmp_path / "latency.json"
    records = prefill_latency.main(
        ["--models", "llama8b", "--dry-run", "--runs", "1", "--lengths", "200", "--out", str(out)]
    )
    assert [(r["model"], r["method"], r["seq_len"]) for r in records] == [("llama8b", "dense", 200)]
    record = records[0]
    assert "error" not in record and record["compile_s"] > 0
    assert record["min_ms"] <= record["median_ms"] <= record["max_ms"]
    saved = json.loads(out.read_text())
    assert saved["records"] == records and saved["environment"]["dry_run"] is True
    assert "median_ms" in capsys.readouterr().out

    other = tmp_path / "other.json"
    timing.write_records(other, [records[0] | {"seq_len": 300}], {"device_kind": "elsewhere"})
    merged = prefill_latency.main(["--merge", str(out), str(other), "--out", str(tmp_path / "m")])
    assert [r["seq_len"] for r in merged] == [200, 300]


def test_benchmark_times_every_method_in_the_same_rounds(monkeypatch):
    """After one warm-up each, the timed calls take turns (no method always first), and a
    method whose warm-up fails gets its error while the others are timed."""

    @dataclasses.dataclass(frozen=True)
    class Failing:
        def init_state(self, batch, num_queries, num_keys=None):
            return ()

        def check_model(self, num_layers, num_heads):
            raise ValueError("this attention fits no model")

        def __call__(self, q, k, v, state, *, layer, lengths):
            raise AssertionError("never called")

    first, second = DenseAttention(implementation="xla"), DenseAttention(implementation=None)
    calls = []

    def recording_prefill(model, tokens, *, attention):
        calls.append(attention)
        return prefill(model, tokens, attention=attention)

    monkeypatch.setattr(prefill_latency, "prefill", recording_prefill)
    model = helpers.tiny_model(seed=1)
    tokens = helpers.random_prompt(0, 100)[0]
    records = prefill_latency.time_prefills(model, tokens, [first, Failing(), second], runs=3)
    assert records[1] == {"error": "ValueError: this attention fits no model"}
    for record in (records[0], records[2]):
        assert record["runs"] == 3 and record["compile_s"] >= 0
        assert 0 < record["min_ms"] <= record["median_ms"] <= record["max_ms"]
    assert calls[0] is first and isinstance(calls[1], Failing) and calls[2] is second  # warm-ups
    timed = [call is first for call in calls[-6:]]  # the rounds
    assert sum(timed) == 3 and timed not in (sorted(timed), sorted(timed, reverse=True))
    with pytest.raises(ValueError, match="fits no model"):
        prefill_latency.time_prefill(model, tokens, Failing(), runs=1)


def test_benchmark_plots_time_to_first_token(tmp_path):
    def record(model, method, seq_len, ms, weights="checkpoint", yarn_factor=None):
        return {"model": model, "method": method, "seq_len": seq_len, "median_ms": ms,
                "weights": weights, "yarn_factor": yarn_factor}  # fmt: skip

    records = [
        record("tiny", "dense", 1024, 2.0), record("tiny", "shareprefill", 1024, 2.5),
        record("tiny", "dense", 4096, 9.0, yarn_factor=4.0),
        record("tiny", "shareprefill", 4096, 4.0, yarn_factor=4.0),
        record("other", "dense", 1024, 1.0, weights="random"),
    ]  # fmt: skip
    results, figure = tmp_path / "latency.json", tmp_path / "ttft.png"
    timing.write_records(results, records, {"device_kind": "test"})
    assert prefill_latency.main(["--plot", str(results), str(figure)]) == []
    assert figure.stat().st_size > 10_000
    timing.write_records(results, records[-1:], {"device_kind": "test"})
    with pytest.raises(SystemExit, match="no records with real weights"):
        prefill_latency.main(["--plot", str(results), str(figure)])


def test_benchmark_on_any_checkpoint(tmp_path):
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama")
    records = prefill_latency.main(
        ["--checkpoint", str(checkpoint), "--lengths", "200", "--runs", "1", "--methods",
         "dense", "vertical_slash", "--out", str(tmp_path / "latency.json")]
    )  # fmt: skip
    assert {(r["model"], r["method"], r["weights"]) for r in records} == {
        ("tiny-llama", "dense", "checkpoint"), ("tiny-llama", "vertical_slash", "checkpoint")
    }  # fmt: skip
    assert all("error" not in r and r["median_ms"] > 0 for r in records)


def test_benchmark_runs_dense_below_the_measured_crossover(tmp_path, monkeypatch):
    """The planned methods run as shipped: below the crossover stored in the model's table for
    this device they run dense (no head planned), from it they plan."""
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama")
    config = read_config(checkpoint)
    kind = jax.devices()[0].device_kind
    table = SharingTable(
        cluster_of=np.zeros((config.num_layers, config.num_heads), np.int32),
        cluster_ids=("0",),
        is_shared=np.zeros(1, bool),
        metadata={"dense_below": {kind: {"tokens": 256, "command": "test", "date": "today"}}},
    )
    resolved = tables.ResolvedTable(table, "test")
    monkeypatch.setattr(prefill_latency.tables, "resolve_table", lambda *a, **k: resolved)
    records = prefill_latency.main(
        ["--checkpoint", str(checkpoint), "--lengths", "200", "320", "--runs", "1", "--methods",
         "vertical_slash", "--out", str(tmp_path / "latency.json")]
    )  # fmt: skip
    assert [(r["seq_len"], r["dense_below"]) for r in records] == [(200, 256), (320, 256)]
    assert [r["num_vertical_slash"] for r in records] == [0, config.num_layers * config.num_heads]


def test_benchmark_with_yarn_factor_keeps_its_records_apart(tmp_path):
    """The tiny checkpoint (1024-token context) at YaRN factor 2 reaches 1200 tokens; its
    records carry the factor and do not replace the trained context's."""
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama")
    out = tmp_path / "latency.json"
    argv = ["--checkpoint", str(checkpoint), "--runs", "1", "--methods", "dense", "--out", str(out)]
    assert prefill_latency.main([*argv, "--lengths", "200", "1200"])[0]["yarn_factor"] is None
    records = prefill_latency.main([*argv, "--lengths", "200", "1200", "--yarn-factor", "2"])
    assert [(r["yarn_factor"], r["seq_len"]) for r in records] == [(2.0, 200), (2.0, 1200)]
    assert all("error" not in r and r["median_ms"] > 0 for r in records)
    saved = json.loads(out.read_text())["records"]
    assert [(r["yarn_factor"], r["seq_len"]) for r in saved] == [
        (None, 200),
        (2.0, 200),
        (2.0, 1200),
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--yarn-factor", "1"], "--yarn-factor must be above 1, got 1"),
        (
            ["--models", "llama8b", "--yarn-factor", "2"],
            "--yarn-factor: llama8b: the model already uses 'llama3' rope scaling",
        ),
    ],
)
def test_benchmark_refuses_a_bad_yarn_factor_before_loading(monkeypatch, tmp_path, argv, message):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad --yarn-factor got as far as loading")

    monkeypatch.setattr(prefill_latency, "load_case_model", refuse)
    with pytest.raises(SystemExit, match=message):
        prefill_latency.main([*argv, "--dry-run", "--out", str(tmp_path / "latency.json")])


def test_benchmark_dry_run_on_a_mesh(tmp_path):
    """The test session's 4 CPU devices as a 2 x 2 mesh: the sharded path runs and records it."""
    records = prefill_latency.main(
        ["--models", "llama8b", "--dry-run", "--runs", "1", "--lengths", "200",
         "--mesh", "data=2,model=2", "--out", str(tmp_path / "latency.json")]
    )  # fmt: skip
    assert [(r["mesh"], r["batch"]) for r in records] == [("data=2,model=2", 2)]
    assert "error" not in records[0] and records[0]["median_ms"] > 0


@pytest.mark.parametrize("case", ["smollm2", pytest.param("qwen", marks=pytest.mark.slow)])
def test_benchmark_random_weight_shapes_match_the_builtin_models(case):
    builtin = prefill_latency.CASES[case]
    config = read_config(builtin_checkpoint(builtin.builtin))
    assert parameter_shapes(builtin.config) == parameter_shapes(config)
    assert builtin.config.rope == config.rope
    assert builtin.config.max_position_embeddings == config.max_position_embeddings
    assert builtin.config.rms_norm_eps == pytest.approx(config.rms_norm_eps)


def test_compile_clock_counts_nested_spans_once():
    assert union_length([(0.0, 2.0), (0.5, 1.0), (1.5, 3.0), (5.0, 6.0)]) == 4.0
    assert union_length([]) == 0.0


def test_cli_prompt_shorter_than_one_planner_block(script, tmp_path):
    # The 63-token chat prompt pads to 128 tokens, less than one 256-token planner block; it is
    # below dense_below, so every head of the sparse method must run dense.
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny-llama")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("What was the business of Mrs. Bennet's life?")
    records = script.main(
        [
            "--checkpoint", str(checkpoint), "--prompt-file", str(prompt),
            "--method", "dense", "shareprefill", "--table", "none",
            "--block-size", "256", "--dense-below", "256", "--max-new-tokens", "2",
        ]
    )  # fmt: skip
    dense, sparse = records
    assert sparse["num_dense"] == 4 * 6 and sparse["answer"] == dense["answer"]


@pytest.mark.parametrize(
    "device_kind,expected",
    [
        ("NVIDIA H100 80GB HBM3", "dense below 16384 tokens: the crossover measured on NVIDIA H1"),
        (
            "NVIDIA H200",
            "dense below 16384 tokens: the crossover measured on NVIDIA H100 80GB HBM3, none"
            " measured on NVIDIA H200",
        ),
        ("cpu", "dense below 1024 tokens (the default: no crossover measured on cpu)"),
    ],
)
def test_main_job_says_where_its_crossover_was_measured(monkeypatch, device_kind, expected):
    device = SimpleNamespace(device_kind=device_kind)
    monkeypatch.setattr(prefill_cli.jax, "devices", lambda: [device])
    table = tables.builtin_table("qwen2.5-coder-0.5b-instruct")
    args = argparse.Namespace(dense_below=None)
    planner, line = prefill_cli.measured_dense_below(args, prefill_cli.SharePrefillConfig(), table)
    assert line.startswith(expected)
    assert ("none measured on" in line) == (device_kind == "NVIDIA H200")
    assert planner.dense_below == int(expected.split()[2])
