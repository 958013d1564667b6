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

from bnstudy.archive import PACK_METRICS, PACK_RUNS, PackError, config_text, iter_runs, summary_text
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


# ---------------------------------------------------------------- a damaged pack: every command refuses, nothing changes


def _lines(root: Path) -> list[str]:
    return (root / PACK_RUNS).read_text().splitlines(keepends=True)


def _edit_line(root: Path, i: int, change) -> None:
    lines = _lines(root)
    x = json.loads(lines[i])
    change(x)
    lines[i] = json.dumps(x) + "\n"
    (root / PACK_RUNS).write_text("".join(lines))


def _escape(root: Path) -> None:
    """One run's line and its rows moved to a path leading two folders up."""
    old = json.loads(_lines(root)[-1])["run"]
    new = f"../../escape3/{old}"
    _edit_line(root, -1, lambda x: x.update(run=new))
    t = pd.read_parquet(root / PACK_METRICS)
    t["run"] = t["run"].astype(str).replace(old, new)
    t.to_parquet(root / PACK_METRICS)


def _shared(root: Path) -> None:
    """A value every run shares, on the defaults line, edited."""
    _edit_line(root, 0, lambda x: x["defaults"]["summary"].update(params=x["defaults"]["summary"]["params"] + 1))


PACK_DAMAGE = {
    # damage: (what it does to the study folder, what --check's first line names)
    "truncated parquet": (lambda r: (r / PACK_METRICS).write_bytes((r / PACK_METRICS).read_bytes()[:600]), "is unreadable"),
    "empty runs.jsonl": (lambda r: (r / PACK_RUNS).write_text(""), "not in runs.jsonl"),
    "a line deleted": (lambda r: (r / PACK_RUNS).write_text("".join(_lines(r)[:-1])), "not in runs.jsonl"),
    "a line duplicated": (lambda r: (r / PACK_RUNS).write_text("".join(_lines(r) + _lines(r)[-1:])), "twice"),
    "parquet of another study": (lambda r: shutil.copy(r.parent / "other" / PACK_METRICS, r / PACK_METRICS), "not in runs.jsonl"),
    "a shared value edited": (_shared, "do not match its checksum"),
    "a traversal path": (_escape, "leads outside its folder"),
    "runs.jsonl deleted": (lambda r: (r / PACK_RUNS).unlink(), "runs.jsonl is not"),
    "defaults line lost": (lambda r: (r / PACK_RUNS).write_text("".join(_lines(r)[1:])), "no defaults line"),
    "a wrong rows count": (lambda r: _edit_line(r, -1, lambda x: x.update(rows=x["rows"] + 1)), "runs.jsonl says"),
    "runs.jsonl cut short": (lambda r: (r / PACK_RUNS).write_text((r / PACK_RUNS).read_text()[:-40]), "is not JSON"),
    "status edited to diverged": (lambda r: _edit_line(r, -1, lambda x: x["summary"].update(status="diverged")), "do not match its checksum"),
    "params edited": (lambda r: _edit_line(r, -1, lambda x: x["summary"].update(params=7)), "do not match its checksum"),
    "ms_per_step edited": (lambda r: _edit_line(r, -1, lambda x: x["summary"].update(ms_per_step=0.001)), "do not match its checksum"),
}


@pytest.fixture(scope="module")
def packed_study(tmp_path_factory) -> Path:
    """A folder holding ``study`` (two trained runs, packed), ``other`` (another study's pack) and ``transfer`` (a
    device job's output with a third run), as copies of which each damage case starts."""
    from bnstudy import transfer
    from bnstudy.runs_cli import runs

    from .conftest import private_data

    base = tmp_path_factory.mktemp("packed")
    study = base / "study"
    with private_data(tmp_path_factory):
        r = cli(["-m", *FAST, "norm=bn", "seed=0,1", f"out_dir={study}"], cwd=base)
    assert r.returncode == 0, r.stderr
    assert call(runs, [str(study), "--pack"])[0] == 0
    fake_run(base / "other", 5)
    pack(base / "other")
    fake_run(base / "gpu", 7)
    transfer.pack(base / "gpu", base / "transfer", 0, {"out_dir": "study"})
    shutil.rmtree(base / "gpu")
    return base


def _commands(study: Path, src: Path) -> dict:
    from bnstudy import transfer
    from bnstudy.analysis.report import main as report
    from bnstudy.runs_cli import runs

    def imported(argv):
        code = transfer.main(argv)
        raise SystemExit(code)

    return {
        "listing": lambda: call(runs, [str(study)]),
        "report": lambda: call(report, [str(study)]),
        "--unpack": lambda: call(runs, [str(study), "--unpack"]),
        "--pack": lambda: call(runs, [str(study), "--pack"]),
        "--compare": lambda: call(runs, [str(study.parent / "other"), "--compare", str(study)]),
        "--reproduce": lambda: call(runs, [str(study), "--reproduce", "2", "--steps", "10"]),
        "--stale": lambda: call(runs, [str(study), "--stale"]),
        "transfer import": lambda: call(imported, ["import", str(src), str(study)]),
        "re-run": lambda: (lambda r: (r.returncode, r.stdout, r.stderr))(
            cli(["-m", *FAST, "norm=bn", "seed=0,1", f"out_dir={study}"], cwd=study.parent)
        ),
    }


@pytest.mark.parametrize("damage", list(PACK_DAMAGE))
def test_every_command_refuses_a_damaged_pack_and_changes_nothing(damage, packed_study, tmp_path, tmp_data):
    from bnstudy.runs_cli import runs

    base = tmp_path / "a"
    shutil.copytree(packed_study, base)
    study = base / "study"
    apply, says = PACK_DAMAGE[damage]
    apply(study)
    before = files(tmp_path)
    code, out, err = call(runs, [str(study), "--check"])
    lines = out.splitlines()
    assert code == 1 and lines and says in lines[0] and "Traceback" not in err, (out, err)
    assert len(set(lines)) == len(lines), out  # each problem once
    for name, command in _commands(study, base / "transfer").items():
        code, out, err = command()
        assert code == 2, (name, code, out, err)
        line = err.strip().splitlines()
        assert len(line) == 1 and line[0].startswith("error: ") and "Traceback" not in err, (name, err)
        assert files(tmp_path) == before, f"{name} changed a file"
    assert not (tmp_path / "escape3").exists()


def test_an_intact_pack_unpacks_reading_every_file_back_and_a_differing_folder_is_refused(packed_study, tmp_path):
    from bnstudy.runs_cli import runs

    study = tmp_path / "study"
    shutil.copytree(packed_study / "study", study)
    first = json.loads(_lines(study)[1])["run"]
    (study / first).mkdir(parents=True)
    (study / first / "summary.json").write_text('{"status": "running"}\n')  # a folder of the same run, not the packed one
    before = files(tmp_path)
    code, _, err = call(runs, [str(study), "--unpack"])
    assert code == 2 and "differs from its packed copy" in err and files(tmp_path) == before, err
    (study / first / "summary.json").unlink()
    (study / first).rmdir()
    code, out, err = call(runs, [str(study), "--unpack"])
    assert code == 0 and "unpacked 2 run(s)" in out, err
    assert not (study / PACK_RUNS).exists() and call(runs, [str(study), "--check"])[0] == 0


def test_a_merge_into_a_damaged_pack_is_refused(packed_study, tmp_path):
    root = tmp_path / "other"
    shutil.copytree(packed_study / "other", root)
    (root / PACK_RUNS).write_text((root / PACK_RUNS).read_text().replace('"params": 10', '"params": 11'))
    fake_run(root, 6)  # a new run folder to merge
    before = files(tmp_path)
    with pytest.raises(PackError, match="damaged"):
        pack(root)
    assert files(tmp_path) == before


def test_a_sealed_summary_names_an_edited_status_and_the_status_must_agree_with_the_loss(tmp_path):
    run = fake_run(tmp_path, 0)
    s = json.loads((run / "summary.json").read_text())
    assert "summary" in s["checksums"] and check_run(run) == []
    for edit in ({"status": "diverged"}, {"params": 11}, {"ms_per_step": 0.001}):  # in a folder as in a pack
        (run / "summary.json").write_text(json.dumps({**s, **edit}))
        assert any("status or numbers do not match its checksum" in p for p in check_run(run)), edit
    unsealed = {k: v for k, v in s["checksums"].items() if k != "summary"}  # recorded before digests
    (run / "summary.json").write_text(json.dumps({**s, "status": "diverged", "checksums": unsealed}))
    assert check_run(run) == ["summary.json says diverged, but metrics.csv's last train loss is 0.5, finite and not above train.diverge_loss 1000"]
    (run / "summary.json").write_text(json.dumps({**s, "params": 11, "checksums": unsealed}))
    assert check_run(run) == []


def test_pack_seals_an_intact_run_trained_before_summaries_were_sealed(tmp_path):
    # a run trained by code from before the digest: its summary.json has file checksums but no "summary" one
    run = fake_run(tmp_path, 0)
    s = json.loads((run / "summary.json").read_text())
    unsealed = {k: v for k, v in s["checksums"].items() if k != "summary"}
    (run / "summary.json").write_text(json.dumps({**s, "checksums": unsealed}, indent=2) + "\n")
    damaged = fake_run(tmp_path, 1)
    d = json.loads((damaged / "summary.json").read_text())
    (damaged / "summary.json").write_text(json.dumps({**d, "status": "diverged", "checksums": {
        k: v for k, v in d["checksums"].items() if k != "summary"}}, indent=2) + "\n")  # fmt: skip
    n, left = pack(tmp_path, log=lambda *a: None)
    assert n == 1 and len(left) == 1 and "damaged" in left[0]  # an unsealed run that fails the check stays as it was
    (rec,) = [r for r in iter_runs(tmp_path) if r.packed]
    assert rec.summary["checksums"]["summary"] == s["checksums"]["summary"]  # sealed as the trainer seals it
    line = [ln for ln in (tmp_path / PACK_RUNS).read_text().splitlines() if rec.rel in ln][0]
    (tmp_path / PACK_RUNS).write_text((tmp_path / PACK_RUNS).read_text().replace(line, line.replace('"params": 10', '"params": 11')))
    assert any("do not match its checksum" in p for p in check_run_problems(tmp_path))


def check_run_problems(root: Path) -> list[str]:
    from bnstudy.archive_write import pack_damage

    whole, per_run = pack_damage(root)
    return whole + [p for ps in per_run.values() for p in ps]
