"""The scale ladder on hand-made rungs with known numbers: per-rung gaps, their changes and verdicts, the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnstudy.analysis import difference_of_differences, welch
from bnstudy.analysis.ladder import NotARung, ladder, main, rung_table, setting_label
from tests.test_analysis import write_run

# test accuracies per seed; bn also has a precise accuracy 0.02 above its standard one
SMALL = {"bn": [0.60, 0.62, 0.64], "affine": [0.10, 0.10, 0.10], "affine+zi": [0.40, 0.42, 0.44], "none+zi": [0.45, 0.35, 0.40]}
BIG = {"bn": [0.90, 0.91, 0.92], "affine+zi": [0.70, 0.71, 0.72], "none+zi": [0.95, 0.96, 0.97]}


def runs_of(accs: dict[str, list[float]], lr: dict[str, float] | None = None) -> pd.DataFrame:
    rows = []
    for name, values in accs.items():
        norm, zi = name.split("+")[0], name.endswith("+zi")
        for seed, acc in enumerate(values):
            rows.append({"norm": norm, "zero_init_residual": zi, "lr": (lr or {}).get(name, 0.1), "seed": seed,
                         "status": "diverged" if acc == 0.10 else "completed", "final_test_acc": acc,
                         "final_test_precise_acc": acc + 0.02 if norm == "bn" else np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def test_setting_labels_name_the_factors_that_are_set() -> None:
    assert setting_label("bn", zero_init_residual=False) == "bn"
    assert setting_label("affine", zero_init_residual=True) == "affine + zero_init_residual"
    assert setting_label("bn", zero_init_residual=np.nan, freeze_after=500) == "bn + freeze_after=500"
    assert setting_label("bn", zero_init_residual=np.bool_(True), freeze_after=1) == "bn + zero_init_residual + freeze_after=1"


def test_rung_gaps_use_precise_bn_and_count_divergence() -> None:
    t = rung_table("small", runs_of(SMALL)).set_index("setting")
    bn = [a + 0.02 for a in SMALL["bn"]]
    assert t.loc["bn", "mean"] == pytest.approx(0.64) and np.isnan(t.loc["bn", "diff"])
    w = welch(SMALL["affine+zi"], bn)
    assert tuple(t.loc["affine + zero_init_residual", ["diff", "diff_lo", "diff_hi", "p"]]) == pytest.approx(tuple(w)[:4])
    assert t.loc["affine", "diverged"] == 3 and t.loc["affine", "mean"] == pytest.approx(0.10)
    assert list(t.index) == ["bn", "affine", "affine + zero_init_residual", "none + zero_init_residual"]


def test_changes_between_rungs_are_differences_of_differences_with_verdicts() -> None:
    table, trend = ladder([("small", runs_of(SMALL)), ("big", runs_of(BIG))])
    assert set(table["rung"]) == {"small", "big"}
    trend = trend.set_index("setting")
    assert "affine" not in trend.index  # not run on the big rung: no change to measure
    bn_small, bn_big = [a + 0.02 for a in SMALL["bn"]], [a + 0.02 for a in BIG["bn"]]
    d = difference_of_differences(BIG["affine+zi"], bn_big, SMALL["affine+zi"], bn_small)
    row = trend.loc["affine + zero_init_residual"]
    assert (row["change"], row["change_lo"], row["change_hi"]) == pytest.approx((d.diff, d.lo, d.hi))
    # -0.22 at both rungs: the gap holds; none + SkipInit goes from a gap of -0.24 to a lead of +0.04
    assert row["verdict"] == "holds"
    assert trend.loc["none + zero_init_residual", "verdict"] == "flips"


@pytest.mark.parametrize(
    ("big_affine", "verdict"),
    [([0.80, 0.81, 0.82], "shrinks"), ([0.50, 0.51, 0.52], "grows"), ([0.70, 0.71, 0.72], "holds")],
)
def test_verdicts_shrink_and_grow(big_affine: list[float], verdict: str) -> None:
    _, trend = ladder([("small", runs_of(SMALL)), ("big", runs_of({**BIG, "affine+zi": big_affine}))])
    assert trend.set_index("setting").loc["affine + zero_init_residual", "verdict"] == verdict


def test_a_rung_with_several_rates_or_no_reference_or_a_repeated_label_is_refused() -> None:
    with pytest.raises(NotARung, match="several rates \\(0.1, 0.2\\)"):
        rung_table("select", pd.concat([runs_of(SMALL), runs_of({"bn": [0.5, 0.6]}, lr={"bn": 0.2})]))
    # the same rate in another configuration (bf16 and fp32 seeds of bn, say) is not one setting either
    mixed = runs_of(SMALL).assign(run=lambda d: [f"x-{d.norm[i]}-{'aa' if i else 'bb'}/seed{d.seed[i]}" for i in d.index])
    with pytest.raises(NotARung, match="'bn' under several configurations \\(x-bn-aa, x-bn-bb\\)"):
        rung_table("full", mixed)
    rung_table("full", mixed.assign(run=lambda d: [f"x-{d.norm[i]}-{d.zero_init_residual[i]}/seed{d.seed[i]}" for i in d.index]))
    with pytest.raises(NotARung, match="no finished 'bn' run"):
        rung_table("x", runs_of({"affine+zi": [0.4, 0.5]}))
    with pytest.raises(NotARung, match="rung label 'small' is given twice"):
        ladder([("small", runs_of(SMALL)), ("small", runs_of(BIG))])


def test_cli_prints_markdown_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    for rung, accs in (("small", SMALL), ("big", BIG)):
        for name, values in accs.items():
            for seed, acc in enumerate(values):
                norm = name.split("+")[0]
                write_run(tmp_path / rung / name.replace("+", "_"), norm, seed, [acc], status="diverged" if acc == 0.10 else "completed",
                          precise=acc + 0.02 if norm == "bn" else None,
                          extra_factors={"zero_init_residual": name.endswith("+zi")})  # fmt: skip
    assert main([f"width 8={tmp_path / 'small'}", f"full={tmp_path / 'big'}"]) == 0
    out = capsys.readouterr().out
    assert "| `none + zero_init_residual` | width 8 → full |" in out and "| flips |" in out
    assert "0.640 ± " in out and "not run" in out  # bn's precise mean; affine as initialised only on the first rung
    assert main([f"x={tmp_path / 'missing'}"]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["no-equals-sign"]) == 2
    assert "LABEL=DIR" in capsys.readouterr().err


def test_a_setting_with_one_seed_prints_its_mean_without_an_interval() -> None:
    # a rung still training: one finished seed has a mean and a gap (to bn precise, 0.93) but no interval, and says so
    from bnstudy.analysis.ladder import markdown

    one = {"bn": BIG["bn"], "affine+zi": [0.70]}
    text = markdown(*ladder([("small", runs_of(SMALL)), ("big", runs_of(one))]))
    assert "nan" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `affine + zero_init_residual`"))
    assert "0.700 (lr 0.1, 1 seed); -0.230 (no interval: one seed)" in row
    change = next(line for line in text.splitlines() if "small → big" in line and "affine + zero_init_residual" in line)
    assert "(no interval: one seed) | – | – |" in change


def test_labels_name_the_optimizer_treatment_and_fixup_only_where_they_differ() -> None:
    quiet = dict(zero_init_residual=False, init="he", branch_gate=None, norm_decay=True, norm_lr_scale=1.0)
    assert setting_label("bn", **quiet) == "bn"
    assert setting_label("bn", **{**quiet, "norm_decay": np.bool_(False)}) == "bn + norm_decay=false"
    fixup = {**quiet, "init": "fixup", "norm_decay": "False", "norm_lr_scale": 0.1}
    assert setting_label("none", **fixup) == "none + init=fixup + norm_decay=false + norm_lr_scale=0.1"
    gate = {**quiet, "zero_init_residual": True, "branch_gate": "scalar", "norm_decay": False}
    assert setting_label("affine", **gate) == "affine + zero_init_residual + branch_gate=scalar + norm_decay=false"


def test_a_rung_joins_several_folders(tmp_path: Path, capsys) -> None:
    for folder, norm, extra in (("mid", "bn", None), ("fair", "affine", {"norm_decay": False})):
        for seed, acc in enumerate([0.8, 0.81, 0.82] if norm == "bn" else [0.7, 0.71, 0.72]):
            write_run(tmp_path / folder, norm, seed, [acc], extra_factors=extra)
    assert main([f"10 epochs={tmp_path / 'mid'},{tmp_path / 'fair'}"]) == 0
    out = capsys.readouterr().out
    assert "`affine + norm_decay=false`" in out and "-0.100" in out
