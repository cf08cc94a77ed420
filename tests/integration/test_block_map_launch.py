"""benchmarks.diagnostics.block_map_launch runs on a CPU (XLA implementation)."""

from benchmarks.diagnostics import block_map_launch


def test_layer_mode_times_both_selections(capsys):
    block_map_launch.main(["layer", "--seq-len", "384", "--implementation", "xla"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("s ", 1)[1].split(":")[0:2] for line in lines] == [
        ["2 heads", " lowered"],
        ["2 heads", " compiled"],
        ["2 heads", " run 0"],
        ["2 heads", " run 1"],
        ["all heads", " run 0"],
        ["all heads", " run 1"],
    ]
    assert all(line.startswith("[layer xla 384]") for line in lines)
