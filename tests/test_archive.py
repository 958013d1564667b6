"""Packed studies: the round trip is exact, every tool reads a pack as folders, and damage to a pack is named."""
from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from bnstudy.archive import PACK_METRICS, PACK_RUNS, config_text, iter_runs, summary_text
from bnstudy.archive_write import pack, unpack
from bnstudy.config import run_name
from bnstudy.runs import MetricsLog, check_run, checksums, read_summary, write_json

from .conftest import cli, compose
from .test_provenance import FAST, call

# values a text round trip could lose: the smallest subnormal, -0.0, 17 significant digits, non-finite
AWKWARD = [5e-324, -0.0, 0.1 + 0.2, 1 / 3, 1e308, math.inf, -math.inf, math.nan, 2.5]


def fake_run(root: Path, seed: int, status: str = "completed", norm: str = "bn") -> Path:
    """A run folder as training leaves it (config.yaml, metrics.csv, summary.json with checksums, train.log, .hydra/)."""
    overrides = ["data=synthetic", f"norm={norm}", f"seed={seed}", "train.steps=20"]
    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    cfg.pop("hydra", None)
    run = root / run_name(cfg)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config_text(cfg))
    log = MetricsLog(run / "metrics.csv")
    for i, v in enumerate(AWKWARD):
        log.write(10, [("train", f"m{i}", v + seed)], seconds=1.23456)
    loss = 1e9 if status == "diverged" else 0.5 + seed  # a diverged run ends at the loss that stopped it
    log.write(20, [("train", "loss", loss), ("test", "acc", 0.75)], seconds=2.0)
    log.close()
    s = {"status": status, "step": 20, "final": {"train/loss": loss, "test/acc": 0.75}, "best": {"test/acc": 0.75},
         "params": 10, "seconds": 2.0, "ms_per_step": 0.1, "factors": {"norm": norm, "seed": seed, "data": "synthetic"},
         "run": run_name(cfg)}
    s["checksums"] = checksums(run)
    write_json(run / "summary.json", s)
    (run / "train.log").write_text(f"training seed {seed}\n")
    if status == "diverged":
        (run / "error.txt").write_text("loss 1e9 at step 20\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    return run


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_is_exact_and_every_reader_sees_the_same_runs(tmp_path):
    root = tmp_path / "study"
    runs = [fake_run(root, 0), fake_run(root, 1, "diverged")]
    (root / "multirun.yaml").write_text("hydra: {}\n")
    before = files(root)
    as_folders = [(r.rel, r.config, r.summary, r.metrics()) for r in iter_runs(root)]

    n, left = pack(root)
    assert (n, left) == (2, [])
    assert not any(r.exists() for r in runs) and (root / PACK_RUNS).exists() and (root / PACK_METRICS).exists()
    packed = list(iter_runs(root))
    assert all(r.packed for r in packed) and len(packed) == 2
    for (rel, cfg, s, m), rec in zip(as_folders, packed):
        assert (rec.rel, rec.config, rec.summary) == (rel, cfg, s)
        got = rec.metrics()
        assert list(got.columns) == list(m.columns) and (got["step"].tolist(), got["metric"].tolist()) == (m["step"].tolist(), m["metric"].tolist())
        # bit for bit, NaN and -0.0 included
        assert got["value"].to_numpy().view(np.int64).tolist() == m["value"].to_numpy().view(np.int64).tolist()
        assert read_summary(rec.dir) == s and check_run(rec.dir) == []

    assert unpack(root) == 2
    after = files(root)
    assert set(after) == {k for k in before if not k.endswith("seed0/train.log")}  # only a completed run's log goes
    for k in after:
        assert after[k] == before[k], k  # every file byte for byte: metrics.csv, config.yaml, summary.json, error.txt, ...
    first = (runs[0] / "metrics.csv").read_text().splitlines()[1].split(",")[3]
    assert struct.pack("<d", float(first)) == struct.pack("<d", 5e-324)


def test_pack_merges_new_folders_and_keeps_unfinished_ones(tmp_path):
    root = tmp_path / "study"
    fake_run(root, 0)
    pack(root)
    fake_run(root, 1)
    running = fake_run(root, 2)
    s = json.loads((running / "summary.json").read_text())
    write_json(running / "summary.json", {**s, "status": "running"})
    n, left = pack(root)
    assert n == 2 and len(left) == 1 and "unfinished (running)" in left[0]
    assert running.is_dir() and sorted(e.rel.split("/")[-1] for e in iter_runs(root)) == ["seed0", "seed1", "seed2"]
    from bnstudy.analysis import load_metrics, load_runs

    assert len(load_runs(root)) == 3 and set(load_metrics(root)["seed"]) == {0, 1, 2}


def test_check_names_damage_in_a_pack(tmp_path):
    from bnstudy.runs_cli import runs

    root = tmp_path / "study"
    fake_run(root, 0)
    fake_run(root, 1)
    pack(root)
    assert call(runs, [str(root), "--check"])[0] == 0
    good = {p: p.read_bytes() for p in (root / PACK_RUNS, root / PACK_METRICS)}

    t = pd.read_parquet(root / PACK_METRICS)
    t.loc[3, "value"] = 0.123  # one edited value
    t.to_parquet(root / PACK_METRICS)
    code, out, _ = call(runs, [str(root), "--check"])
    assert code == 1 and "seed0: metrics.csv does not match summary.json's checksum" in out

    (root / PACK_METRICS).write_bytes(good[root / PACK_METRICS][:200])  # cut short
    code, out, _ = call(runs, [str(root), "--check"])
    assert code == 1 and f"{PACK_METRICS} is unreadable" in out

    (root / PACK_METRICS).write_bytes(good[root / PACK_METRICS])
    lines = good[root / PACK_RUNS].decode().splitlines(keepends=True)
    (root / PACK_RUNS).write_text(lines[1])  # one run's line lost
    code, out, _ = call(runs, [str(root), "--check"])
    assert code == 1 and "rows of 1 run(s) not in runs.jsonl" in out

    (root / PACK_RUNS).write_text(lines[0] + lines[1][:50] + "\n")  # a line cut short
    code, out, _ = call(runs, [str(root), "--check"])
    assert code == 1 and "line 2 is not JSON" in out


def test_check_names_edited_config_lost_summary_and_short_completed_runs(tmp_path):
    root = tmp_path / "study"
    a, b, c, d = (fake_run(root, s) for s in range(4))
    (a / "config.yaml").write_text((a / "config.yaml").read_text().replace("lr: ", "lr: 9"))
    (b / "summary.json").unlink()
    (c / "summary.json").write_text("")
    s = json.loads((d / "summary.json").read_text())
    cfg = (d / "config.yaml").read_text().replace("steps: 20", "steps: 40")
    (d / "config.yaml").write_text(cfg)
    write_json(d / "summary.json", {**s, "checksums": checksums(d)})
    assert any("config.yaml names " in p for p in check_run(a))
    assert check_run(b) == ["summary.json is missing or unreadable"] and check_run(c) == ["summary.json is empty"]
    assert any("completed at step 20, but train.steps is 40" in p for p in check_run(d))
    from bnstudy.runs_cli import runs

    code, out, _ = call(runs, [str(root), "--check"])
    assert code == 1 and out.count("damaged ") == 4


def test_a_packed_study_rerun_trains_nothing_and_a_new_seed_is_merged(tmp_path, tmp_data):
    out = tmp_path / "study"
    args = ["-m", *FAST, "norm=bn", "seed=0", f"out_dir={out}"]
    assert cli(args, cwd=tmp_path).returncode == 0
    from bnstudy.runs_cli import runs

    assert call(runs, [str(out), "--pack"])[0] == 0
    before = files(out)
    again = cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert files(out) == before and not list(out.glob("*/seed*"))  # nothing trained, nothing written or left

    more = cli(["-m", *FAST, "norm=bn", "seed=0,1", f"out_dir={out}"], cwd=tmp_path)
    assert more.returncode == 0 and more.stdout.count("skipped") == 1
    assert [p.parent.name for p in out.glob("*/seed*/summary.json")] == ["seed1"]  # only the new run, as a folder
    assert (out / "sweeps.log").read_text().count("bnstudy-train -m") == 2  # both sweeps' commands are kept
    new = next(out.glob("*/seed1"))
    (new / "summary.json").write_text("")  # damaged: retrained, with one warning line
    again = cli(["-m", *FAST, "norm=bn", "seed=0,1", f"out_dir={out}"], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("summary.json is empty") == 1, again.stdout
    assert json.loads((new / "summary.json").read_text())["status"] == "completed"
    assert call(runs, [str(out), "--pack"])[0] == 0
    assert not list(out.glob("*/seed*")) and [r.rel.split("/")[1] for r in iter_runs(out)] == ["seed0", "seed1"]
    assert call(runs, [str(out), "--check"])[0] == 0


def test_report_tells_runs_outside_a_git_checkout_from_runs_before_provenance(tmp_path):
    from bnstudy.analysis.report import _code_lines

    runs = pd.DataFrame({"commit": ["unknown", "unknown", "abc1234"], "code": ["f1", None, "f1"]})
    line = _code_lines(tmp_path, runs)[0]
    assert "abc1234 (1 run)" in line and "unknown (1 run: trained before provenance was recorded)" in line
    assert "unknown (1 run: trained outside a git checkout)" in line


def test_the_empty_folders_of_skipped_jobs_go_without_breaking_the_walk(tmp_path):
    """Several configs x seeds of empty job folders (a re-run of a packed study): all removed, no error."""
    from bnstudy.sweep_log import keep_sweep_record

    for name in ("a-1", "b-2", "c-3"):
        for seed in range(3):
            (tmp_path / name / f"seed{seed}").mkdir(parents=True)
    (tmp_path / "multirun.yaml").write_text("old: record\n")
    keep_sweep_record(tmp_path, b"old: record\n", sweep_id=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun.yaml"]
