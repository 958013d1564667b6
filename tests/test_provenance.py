"""Every result names its code, damage is detected, studies are not merged, and `make run` is a reproducibility check."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bnstudy.provenance import UNKNOWN, current_code, git_state, stale_files
from bnstudy.runs import check_run
from bnstudy.train import train_run

from .conftest import ROOT, cli, have_real, private_data
from .test_report import tiny

FAST = ["data=synthetic", "train.progress=off", "train.steps=20", "train.eval_every=10", "train.log_every=10"]


def train(root: Path, norm: str = "bn", seed: int = 0, study: str = "tiny") -> Path:
    run = root / f"synthetic-mlp-{norm}" / f"seed{seed}"
    train_run(tiny(norm, seed, study), run)
    return run


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def edit_summary(run: Path, fn) -> None:
    s = summary(run)
    fn(s)
    (run / "summary.json").write_text(json.dumps(s))


def call(fn, argv: list[str]) -> tuple[int, str, str]:
    """Run a console-script function; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            fn(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def pretend_variant_changed(run: Path) -> None:
    """What a run trained before an edit of bnstudy/norm/variants.py records (the recorded hash differs)."""

    def change(s: dict) -> None:
        code = s["provenance"]["code"]
        code["files"]["bnstudy/norm/variants.py"] = "0" * 12
        code["fingerprint"] = "f" * 16

    edit_summary(run, change)


# ---------------------------------------------------------------- provenance (item 2)


def test_every_summary_records_provenance(tmp_path, tmp_data):
    s = summary(train(tmp_path))
    p = s["provenance"]
    for key in ("bnstudy", "commit", "dirty", "python", "torch", "cuda", "device_name", "hostname", "cpu", "threads", "code"):
        assert key in p, key
    assert p["threads"] == 1  # train.threads=1
    assert p["code"] == current_code()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the commit and, when dirty, a hash of the diff
        assert p["commit"] == head.stdout.strip()
        assert isinstance(p["dirty"], bool) and (not p["dirty"] or len(p["diff_sha256"]) == 16)


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path):
    assert git_state(tmp_path) == {"commit": UNKNOWN, "dirty": None}


def test_only_changes_outside_results_make_a_checkout_dirty(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)

    (tmp_path / "results" / "study").mkdir(parents=True)
    (tmp_path / "results" / "study" / "sweeps.log").write_text("one sweep\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    state = git_state.__wrapped__  # uncached
    assert state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "study" / "sweeps.log").write_text("one sweep\nanother sweep\n")  # a run's own log
    assert state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    s = state(tmp_path)
    assert s["dirty"] is True and len(s["diff_sha256"]) == 16


def test_a_changed_variant_makes_its_runs_stale(tmp_path, tmp_data):
    run = train(tmp_path / "out")
    copy = tmp_path / "pkg"
    shutil.copytree(ROOT / "bnstudy", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert stale_files(summary(run), current_code(copy)) == []
    (copy / "analysis" / "plots.py").write_text("# analysis does not change a training result\n")
    assert stale_files(summary(run), current_code(copy)) == []
    variants = copy / "norm" / "variants.py"
    variants.write_text(variants.read_text() + "\nEPS_CHANGED = True\n")
    assert stale_files(summary(run), current_code(copy)) == ["bnstudy/norm/variants.py"]


def test_runs_stale_lists_only_runs_from_other_code(tmp_path, tmp_data):
    from bnstudy.runs_cli import runs

    old, new = train(tmp_path, "bn"), train(tmp_path, "affine")
    committed = train(tmp_path, "none")
    edit_summary(committed, lambda s: s.pop("provenance"))  # as the committed results/ runs: no provenance
    pretend_variant_changed(old)
    code, out, err = call(runs, [str(tmp_path), "--stale"])
    assert code == 0
    assert out.splitlines() == [f"stale {old.relative_to(tmp_path)} (completed, commit {_commit_label()}): changed since: bnstudy/norm/variants.py"]
    assert "1 stale, 1 current, 1 unknown" in err
    code, out, _ = call(runs, [str(tmp_path), "--csv"])
    rows = {r["norm"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["none"]["commit"] == UNKNOWN and rows["bn"]["commit"] == _commit_label()
    assert new.exists()


def _commit_label() -> str:
    g = git_state()
    return UNKNOWN if g["commit"] == UNKNOWN else g["commit"][:7] + ("+dirty" if g["dirty"] else "")


def test_a_sweep_warns_once_per_stale_run_it_skips(tmp_path, tmp_data):
    args = ["-m", *FAST, "norm=bn,affine", f"out_dir={tmp_path}"]
    assert cli(args, cwd=tmp_path).returncode == 0
    bn = next(tmp_path.glob("synthetic-mlp-bn-*/seed0"))
    pretend_variant_changed(bn)
    before = (bn / "summary.json").read_text()
    again = cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    stale = [line for line in again.stdout.splitlines() if "trained by other code" in line]
    mine = [line for line in stale if str(bn) in line]
    assert len(mine) == 1 and "bnstudy/norm/variants.py" in mine[0]
    assert len(stale) <= 2  # the affine run too only if the package was edited while this test ran
    assert again.stdout.count("skipped") == 2
    assert (bn / "summary.json").read_text() == before  # skipped, not retrained


def test_report_states_the_commits_and_warns_on_mixed_code(tmp_path, tmp_data, capsys):
    from bnstudy.analysis.report import main

    for norm in ("bn", "affine"):
        train(tmp_path, norm)
    committed = train(tmp_path, "none")
    edit_summary(committed, lambda s: s.pop("provenance"))
    main([str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert f"- code: commit {_commit_label()} (2 runs), unknown (1 run: trained before provenance was recorded)" in text
    assert "warning" not in capsys.readouterr().err
    pretend_variant_changed(tmp_path / "synthetic-mlp-bn" / "seed0")
    main([str(tmp_path)])
    assert "2 different versions of the training code" in (tmp_path / "report.md").read_text()
    assert "2 different versions of the training code" in capsys.readouterr().err


# ---------------------------------------------------------------- damage (item 3)


def _lines(run: Path) -> list[str]:
    return (run / "metrics.csv").read_text().splitlines()


def _write(run: Path, lines: list[str]) -> None:
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


DAMAGE = {
    "truncated last line": (lambda r: (r / "metrics.csv").write_text((r / "metrics.csv").read_text()[:-9]), "field"),
    "deleted": (lambda r: (r / "metrics.csv").unlink(), "missing"),
    "non-numeric value": (lambda r: _write(r, [_lines(r)[0], _lines(r)[1].replace(_lines(r)[1].split(",")[3], "abc"), *_lines(r)[2:]]), "does not parse"),
    "no header": (lambda r: _write(r, _lines(r)[1:]), "header"),
    "duplicate row": (lambda r: _write(r, [*_lines(r), _lines(r)[-1]]), "duplicate"),
    "ends early": (lambda r: _write(r, [line for line in _lines(r) if not line.startswith("30,")]), "ends at step 25"),
    "final disagrees": (lambda r: edit_summary(r, lambda s: s["final"].update({"test/acc": 0.123})), "final test/acc"),
    "wrong type in summary": (lambda r: edit_summary(r, lambda s: s.update(step="30")), "'step' is str"),
    "bool as a number": (lambda r: edit_summary(r, lambda s: s.update(params=True)), "'params' is bool"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    with private_data(tmp_path_factory):
        return train(tmp_path_factory.mktemp("trained"))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_check_finds_each_kind_of_damage(damage, trained, tmp_path):
    from bnstudy.runs_cli import runs

    run = tmp_path / "r" / trained.name
    shutil.copytree(trained, run)
    assert check_run(run) == []
    assert call(runs, [str(tmp_path), "--check"])[0] == 0
    apply, says = DAMAGE[damage]
    apply(run)
    problems = check_run(run)
    assert problems and says in problems[0], problems
    code, out, err = call(runs, [str(tmp_path), "--check"])
    assert code == 1 and out.startswith("damaged r/seed0: ") and "1 damaged" in err


def test_every_committed_run_passes_the_check():
    # every committed pack whole (schema, one line per run, each run's rows), and three runs of each checked
    # in full (checksums, config name, metrics against the summary): `bnstudy-runs results --check` checks all
    from bnstudy.archive import iter_runs
    from bnstudy.archive_write import find_packs, pack_problems

    packs = find_packs(ROOT / "results")
    assert len(packs) >= 15
    n = 0
    for root in packs:
        assert pack_problems(root) == [], root
        recs = list(iter_runs(root))
        for rec in dict.fromkeys([recs[0], recs[len(recs) // 2], recs[-1]]):
            assert check_run(rec.dir) == [], rec.dir
            n += 1
    assert n > 40


def test_a_sweep_retrains_a_damaged_run_and_says_why(tmp_path, tmp_data):
    args = ["-m", *FAST, "norm=bn,affine", f"out_dir={tmp_path}"]
    assert cli(args, cwd=tmp_path).returncode == 0
    bn = next(tmp_path.glob("synthetic-mlp-bn-*/seed0"))
    intact = _lines(bn)
    _write(bn, intact[:-4])  # the rows of the last step lost
    again = cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("retraining") == 1 and "damaged (metrics.csv ends at step 10, summary.json says 20" in again.stdout
    assert again.stdout.count("skipped") == 1  # affine only
    assert check_run(bn) == [] and [r.split(",")[:4] for r in _lines(bn)] == [r.split(",")[:4] for r in intact]


def test_report_leaves_out_damaged_runs_and_lists_them(tmp_path, tmp_data, capsys):
    from bnstudy.analysis.report import main

    for norm in ("bn", "affine"):
        for seed in (0, 1):
            train(tmp_path, norm, seed)
    bad = tmp_path / "synthetic-mlp-affine" / "seed1"
    _write(bad, _lines(bad)[:-4])
    main([str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert "| synthetic-mlp-affine/seed1 | damaged |" in text and "left out of every table" in text
    assert "3 run(s)" in text  # the study line counts the runs reported on
    assert "left out synthetic-mlp-affine/seed1: damaged" in capsys.readouterr().err


# ---------------------------------------------------------------- several studies (item 9)


def test_report_refuses_a_folder_of_several_studies(tmp_path, tmp_data):
    from bnstudy.analysis.report import main

    train(tmp_path / "one", "bn", study="alpha")
    train(tmp_path / "two", "bn", study="beta")
    code, _, err = call(main, [str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds 2 studies" in err and f"alpha in {tmp_path / 'one'}" in err and f"beta in {tmp_path / 'two'}" in err
    assert not (tmp_path / "report.md").exists()
    assert call(main, [str(tmp_path / "one")])[0] == 0  # each folder on its own is fine


# ---------------------------------------------------------------- make run (item 10)


def test_make_run_trains_into_an_ignored_folder_and_compares():
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "run"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    train_line = next(line for line in dry.stdout.splitlines() if "bnstudy-train" in line)
    out_dir = re.search(r"out_dir=(\S+)", train_line)
    assert out_dir and not out_dir.group(1).startswith("results"), train_line
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", out_dir.group(1)])
    assert ignored.returncode == 0, f"{out_dir.group(1)} is not git-ignored"
    assert f"bnstudy-runs {out_dir.group(1)} --compare results/quickstart" in dry.stdout


def _study(root: Path, curves: dict[tuple[str, int], list[float]]) -> Path:
    """Hand-made finished runs: test accuracy every 10 steps, the last one final."""
    for (norm, seed), accs in curves.items():
        d = root / f"mnist-mlp-{norm}-x" / f"seed{seed}"
        d.mkdir(parents=True)
        rows = [f"{10 * (i + 1)},test,acc,{a!r},1.0" for i, a in enumerate(accs)]
        (d / "metrics.csv").write_text("step,split,metric,value,seconds\n" + "\n".join(rows) + "\n")
        factors = {"data": "mnist", "model": "mlp", "norm": norm, "lr": 0.5, "seed": seed, "study": "q"}
        s = {"status": "completed", "step": 10 * len(accs), "final": {"test/acc": accs[-1]}, "best": {"test/acc": max(accs)}, "factors": factors}
        (d / "summary.json").write_text(json.dumps(s))
    return root


def test_compare_states_each_verdict_with_its_bound(tmp_path):
    from bnstudy.analysis.compare import report

    committed = _study(tmp_path / "committed", {
        ("bn", 0): [0.95], ("bn", 1): [0.93], ("bn", 2): [0.94], ("affine", 0): [0.90], ("none", 0): [0.80],
        ("noisy_bn", 0): [0.85], ("layernorm", 0): [0.5, 0.6, 0.7, 0.96, 0.94],  # swings by 0.26 then 0.02 late in training
        ("groupnorm", 0): [0.5, 0.6, 0.7, 0.8],
    })  # fmt: skip
    fresh = _study(tmp_path / "fresh", {
        ("bn", 0): [0.95], ("bn", 1): [0.96], ("bn", 2): [0.99], ("affine", 0): [0.903], ("none", 0): [0.82],
        ("layernorm", 0): [0.5, 0.6, 0.7, 0.96, 0.95], ("groupnorm", 0): [0.5, 0.6, 0.7, 0.8],
    })  # fmt: skip
    lines, ok = report(fresh, committed)
    text = "\n".join(lines)
    assert not ok
    assert re.search(r"groupnorm seed=0\s+0\.8000 — committed 0\.8000: identical, every logged value", text)
    assert re.search(r"bn seed=0\s+0\.9500 — committed 0\.9500: identical, every logged value", text)
    assert re.search(r"affine seed=0\s+0\.9030 — committed 0\.9000: differs by \+0\.0030, within the tolerance \(±0\.005\)", text)
    assert re.search(r"bn seed=1\s+0\.9600 — committed 0\.9300: differs by \+0\.0300, within the committed seed interval", text)
    assert re.search(r"bn seed=2\s+0\.9900 — committed 0\.9400: differs by \+0\.0500, outside ±0\.005 and the committed seed interval \[.*\]: investigate", text)
    assert re.search(r"layernorm seed=0\s+0\.9500 — committed 0\.9400: differs by \+0\.0100, within the committed run's swing \(±0\.2600", text)
    assert re.search(r"none seed=0\s+0\.8200 — committed 0\.8000: differs by \+0\.0200, outside ±0\.005: investigate", text)
    assert re.search(r"noisy_bn seed=0\s+– — committed 0\.8500: no finished fresh run \(not trained\)", text)
    assert lines[-1].startswith("2 of 8 bit-identical") and lines[-1].endswith("investigate")
    assert report(committed, committed)[1]
    # the same final accuracy with a different path to it is not bit-identity
    (fresh / "mnist-mlp-groupnorm-x" / "seed0" / "metrics.csv").write_text("step,split,metric,value,seconds\n10,test,acc,0.51,1.0\n20,test,acc,0.6,1.0\n30,test,acc,0.7,1.0\n40,test,acc,0.8,1.0\n")
    assert "groupnorm seed=0  0.8000 — committed 0.8000: identical final accuracy (other logged values differ at float level)" in "\n".join(report(fresh, committed)[0])


@pytest.mark.slow
def test_make_run_on_a_fresh_clone_reproduces_and_leaves_git_clean(tmp_path, tmp_data):
    """`make run` in a clean copy of the working tree: trains, compares, changes no tracked file, and trains nothing the second time."""
    reason = have_real("mnist")
    if reason:
        pytest.skip(reason)
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
    clone = tmp_path / "clone"
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / rel)
    git = lambda *a: subprocess.run(["git", "-C", str(clone), *a], capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "clone")
    make = ["make", "run", f"VENV={ROOT / '.venv'}", "-o", f"{ROOT / '.venv'}/.installed"]
    first = subprocess.run(make, cwd=clone, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    verdicts = [line for line in first.stdout.splitlines() if "— committed" in line]
    assert len(verdicts) == 3 and all("investigate" not in v for v in verdicts), first.stdout
    assert git("status", "--porcelain").stdout == ""
    summaries = {p: p.read_text() for p in (clone / "runs" / "quickstart").glob("**/summary.json")}
    assert len(summaries) == 3
    second = subprocess.run(make, cwd=clone, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stdout.count("skipped") + second.stderr.count("skipped") == 3
    assert {p: p.read_text() for p in summaries} == summaries
    assert git("status", "--porcelain").stdout == ""
