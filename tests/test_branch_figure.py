"""The branch-opening figure and table of ``bnstudy-report``, on tiny ResNets trained here with probes on."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnstudy.analysis import group_columns, load_metrics, load_runs
from bnstudy.analysis.branches import GAIN, GAMMA, branch_figure, branch_rows, branch_sites, branch_table
from bnstudy.analysis.report import main
from bnstudy.config import RunConfig
from bnstudy.train import train_run

from .conftest import private_data

# ResNet-8's norm sites in forward order: stem (1); block 1: norm1 (2), norm2 (3); block 2: norm1 (4), norm2 (5),
# shortcut (6); block 3: norm1 (7), norm2 (8), shortcut (9). Written out here, independently of the code under test.
NORM2 = {1: "layer3", 2: "layer5", 3: "layer8"}
SETTINGS = {  # name: (norm, model keys, seeds)
    "skipinit": ("affine", {"zero_init_residual": True}, (0, 1)),
    "gain": ("none", {"zero_init_residual": True}, (0, 1)),
    "scalar": ("affine", {"zero_init_residual": True, "branch_gate": "scalar"}, (0,)),
    "fixup": ("none", {"init": "fixup"}, (0,)),
}


def resnet(norm: str, model: dict, seed: int, probe: int = 5) -> RunConfig:
    """20 steps of a ResNet-8 at width 4 on 8x8 synthetic images, probed every ``probe`` steps."""
    return RunConfig.from_dict(
        {
            "data": {"name": "synthetic", "channels": 3, "size": 8, "train_size": 128, "test_size": 32},
            "model": {"name": "resnet", "depth": 8, "width": 4, "activation": "relu", **model},
            "norm": {"name": norm},
            "optim": {"lr": 0.05},
            "train": {"steps": 20, "batch_size": 32, "eval_every": 10, "log_every": 10, "progress": "off", "threads": 1},
            "probe": {"every": probe, "batch_size": 32},
            "seed": seed,
            "device": "cpu",
            "study": "branches",
        }
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("branches")
    with private_data(tmp_path_factory):
        for name, (norm, model, seeds) in SETTINGS.items():
            for seed in seeds:
                train_run(resnet(norm, model, seed), root / name / f"seed{seed}")
    return root


def _setting(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs["run"].str.startswith(f"{name}/")


def test_branch_sites_come_from_the_model(study: Path) -> None:
    sites = branch_sites(study / "skipinit" / "seed0")
    assert [(s.block, s.layer, s.stage) for s in sites] == [(1, "layer3", 1), (2, "layer5", 2), (3, "layer8", 3)]
    assert all(s.name.endswith(".norm2") for s in sites)


def test_report_draws_the_branch_figure_and_table(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    main([str(study), "--out", str(out)])
    text = (out / "report.md").read_text()
    assert "## Residual branches opening (probes)" in text and "](figures/branch_opening.png)" in text
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"branch_opening.{ext}").stat().st_size > 1000
    table = pd.read_csv(out / "branch_scales.csv")
    runs = load_runs(study)
    metrics = load_metrics(study, runs)
    probe = metrics[metrics["split"] == "probe"]

    def expected(name: str, metric: str, which: str) -> tuple[int, float]:
        d = probe[_setting(probe, name) & (probe["metric"] == metric)]
        step = d["step"].min() if which == "first" else d["step"].max()
        return int(step), float(d.loc[d["step"] == step, "value"].mean())

    def rows(norm: str, **where) -> pd.DataFrame:
        t = table[table["norm"] == norm]
        for k, v in where.items():
            t = t[t[k].astype(str) == str(v)]
        return t

    skip = rows("affine", branch_gate="norm")
    assert list(skip["block"]) == [1, 2, 3] and set(skip["scale"]) == {GAMMA} and (skip["runs"] == 2).all()
    fixup = rows("none", init="fixup")
    assert list(fixup["block"]) == [1, 2, 3] and set(fixup["scale"]) == {GAIN}
    gain = rows("none", zero_init_residual=True)
    assert set(gain["scale"]) == {GAIN} and (gain["runs"] == 2).all()
    scalar = rows("affine", branch_gate="scalar")
    assert list(scalar["scale"]) == [GAIN, GAMMA] * 3  # per block, the gain first and the γ beside it
    for b, layer in NORM2.items():
        r = skip[skip["block"] == b].iloc[0]
        assert r["site"] == layer
        for which in ("first", "last"):
            step, value = expected("skipinit", f"{layer}/gamma/mean", which)
            _, spread = expected("skipinit", f"{layer}/gamma/std", which)
            assert r[f"{which}_step"] == step and r[which] == pytest.approx(value) and r[f"{which}_spread"] == pytest.approx(spread)
        for name, t in (("fixup", fixup), ("gain", gain)):
            r = t[t["block"] == b].iloc[0]
            assert r["site"] == f"block{b}/gain" and pd.isna(r["first_spread"])
            for which in ("first", "last"):
                step, value = expected(name, f"block{b}/gain", which)
                assert r[f"{which}_step"] == step and r[which] == pytest.approx(value)
        g, y = scalar[(scalar["block"] == b) & (scalar["scale"] == GAIN)].iloc[0], scalar[(scalar["block"] == b) & (scalar["scale"] == GAMMA)].iloc[0]
        assert g["last"] == pytest.approx(expected("scalar", f"block{b}/gain", "last")[1])
        assert y["site"] == layer and y["last"] == pytest.approx(expected("scalar", f"{layer}/gamma/mean", "last")[1])
    # the gates started where each setting starts them: Fixup's multiplier at 1, the others' gain at 0, γ at 1
    assert (fixup["first"] - 1).abs().max() < 0.5 and gain["first"].abs().max() < 0.5
    assert (scalar.loc[scalar["scale"] == GAMMA, "first"] - 1).abs().max() < 0.5


def test_branch_figure_panels_per_block_and_the_dashed_gamma(study: Path) -> None:
    runs = load_runs(study)
    metrics = load_metrics(study, runs)
    fig = branch_figure(runs, metrics)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["block 1 (stage 1)", "block 2 (stage 2)", "block 3 (stage 3)"]
    colours = {line.get_color() for ax in axes for line in ax.get_lines() if line.get_linestyle() == "-"}
    assert len(colours) == 4  # one per setting, the two affine ones apart
    assert all(any(line.get_linestyle() == "--" for line in ax.get_lines()) for ax in axes)  # branch_gate=scalar's γ


def test_an_unbuildable_config_keeps_the_gains_and_drops_the_gamma(study: Path, tmp_path: Path) -> None:
    runs = load_runs(study)
    metrics = load_metrics(study, runs)
    broken = tmp_path / "scalar-seed0"
    shutil.copytree(study / "scalar" / "seed0", broken)
    conf = yaml.safe_load((broken / "config.yaml").read_text())
    conf["model"]["depth"] = 7  # not a CIFAR ResNet depth: no model, so no mapping
    (broken / "config.yaml").write_text(yaml.safe_dump(conf))
    assert branch_sites(broken) is None
    runs.loc[runs["run"] == "scalar/seed0", "run_dir"] = str(broken)
    rows = branch_rows(runs, metrics)
    mine = rows[rows["run"] == "scalar/seed0"]
    assert set(mine["scale"]) == {GAIN} and len(rows[rows["run"] == "skipinit/seed0"]) > 0
    assert not branch_table(runs, metrics, group_columns(runs)).empty


def test_no_section_without_branch_scales(tmp_path: Path, tmp_data: Path) -> None:
    plain = tmp_path / "plain"
    train_run(resnet("affine", {"zero_init_residual": True}, 0, probe=0), plain / "run" / "seed0")
    out = tmp_path / "report"
    main([str(plain), "--out", str(out)])
    assert "Residual branches" not in (out / "report.md").read_text()
    assert not (out / "branch_scales.csv").exists() and not (out / "figures" / "branch_opening.png").exists()
