"""benchmarks.sharing_ablation: its settings, a CPU dry run on the tiny model, its figure and the
merge of result files."""

from __future__ import annotations

import json

import pytest

from benchmarks import sharing_ablation, timing


def test_settings_cover_the_ablation():
    labels = {(s.method, s.variant) for s in sharing_ablation.settings()}
    for method in ("shareprefill", "flexprefill", "vertical_slash"):
        assert {(method, "full"), (method, "gamma_0.9"), (method, "gamma_0.99")} <= labels
    assert {("shareprefill", v) for v in ("no_sharing", "no_exclusion")} <= labels
    tau_sims = {v for m, v in labels if v.startswith("tau_sim")}
    assert len(tau_sims) + 1 >= 3  # with the default 0.5: at least three values
    copies = [s for s in sharing_ablation.settings() if s.same_as]
    order = [(s.method, s.variant) for s in sharing_ablation.settings()]
    assert all(order.index(s.same_as) < order.index((s.method, s.variant)) for s in copies)


def test_dry_run_and_plot(tmp_path):
    out = tmp_path / "ablation.json"
    records = sharing_ablation.main(
        ["--dry-run", "--models", "smollm2", "--variants", "no_sharing", "no_exclusion",
         "--out", str(out)]
    )  # fmt: skip
    got = {(r["method"], r["variant"]) for r in records}
    assert got == {
        ("dense", "full"), ("flexprefill", "full"), ("vertical_slash", "full"),
        ("shareprefill", "full"), ("shareprefill", "no_sharing"), ("shareprefill", "no_exclusion"),
    }  # fmt: skip
    by_key = {(r["method"], r["variant"]): r for r in records}
    dense = by_key[("dense", "full")]
    assert dense["delta_nll"] == 0 and dense["kl"] == 0 and dense["density"] == 1.0
    for record in records:
        for key in ("model", "seq_len", "method", "variant", "density", "delta_nll", "kl"):
            assert key in record
        assert record["retrieval_accuracy"] is None and record["prefill_ms"] > 0
        assert record["num_shared"] >= 0
    copy = by_key[("shareprefill", "no_sharing")]
    assert copy["same_as"] == "flexprefill/full"
    assert copy["nll"] == by_key[("flexprefill", "full")]["nll"]
    assert json.loads(out.read_text())["records"] == records
    figure = tmp_path / "ablation.png"
    sharing_ablation.main(["--plot", str(out), str(figure)])
    assert figure.stat().st_size > 10_000


def test_merge_keeps_the_later_files_cases(tmp_path, capsys):
    def record(variant, density, length=8192):
        return {"model": "smollm2", "seq_len": length, "method": "shareprefill",
                "variant": variant, "density": density}  # fmt: skip

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    timing.write_records(first, [record("full", 0.4), record("gamma_0.9", 0.3)], {"commit": "a"})
    timing.write_records(second, [record("full", 0.5), record("full", 0.6, 4096)], {"commit": "b"})
    out = tmp_path / "merged.json"
    merged = sharing_ablation.main(["--merge", str(first), str(second), "--out", str(out)])
    assert [(r["variant"], r["seq_len"], r["density"]) for r in merged] == [
        ("gamma_0.9", 8192, 0.3), ("full", 8192, 0.5), ("full", 4096, 0.6),
    ]  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["records"] == merged
    assert [e["commit"] for e in saved["environment"]["merged_from"]] == ["a", "b"]
    assert saved["environment"]["merged_from"][1]["file"] == str(second)
    assert "gamma_0.9" in capsys.readouterr().out


def test_passkeys_at_the_context_limit_leave_room_for_the_reply(monkeypatch):
    from evaluation.harness.model_runs import tiny_random_model

    evaluated = tiny_random_model()
    asked = {}

    class Stop(Exception):
        pass

    def generate_samples(task, *, length, **kwargs):
        asked[task] = length
        raise Stop

    monkeypatch.setattr(sharing_ablation, "generate_samples", generate_samples)
    monkeypatch.setattr(sharing_ablation, "cell_windows", lambda *args: [])
    args = sharing_ablation.parse_args(["--retrieval-samples", "2"])
    with pytest.raises(Stop):
        sharing_ablation.run_cell(evaluated, "tiny", evaluated.context, args, {}, True, None)
    reply = sharing_ablation.get_task("passkey").tokens_to_generate
    assert asked == {"passkey": evaluated.context - reply}
