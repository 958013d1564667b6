"""``bnstudy-runs`` and ``bnstudy-report``: list, check and compare finished runs, and write reports."""
from __future__ import annotations

import sys
from pathlib import Path

from bnstudy.runs import read_summary


def runs(argv: list[str] | None = None) -> None:
    """``bnstudy-runs DIR``: one row per run folder under DIR (factors, status, step, final test accuracy, commit)."""
    import argparse

    p = argparse.ArgumentParser(prog="bnstudy-runs", description=runs.__doc__)
    p.add_argument("dir", nargs="?", default="results", help="folder holding run folders (searched recursively)")
    p.add_argument("--status", help="only runs with this status (comma-separated: completed,diverged,failed,running)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="check every run for damage (summary.json types; a finished run's metrics.csv against it); exit 1 if any is damaged")
    mode.add_argument("--stale", action="store_true", help="list the runs trained by training code that differs from this checkout's")
    mode.add_argument("--compare", metavar="REF", help="compare each finished run under REF (e.g. a committed study) with the run of the same name under DIR; exit 1 unless all reproduce")
    mode.add_argument("--pack", action="store_true", help="pack DIR's finished run folders into DIR/runs.jsonl + DIR/metrics.parquet (merging with a pack there) and remove them")
    mode.add_argument("--unpack", action="store_true", help="turn DIR's pack back into run folders and remove it")
    mode.add_argument("--reproduce", type=int, metavar="N", help="re-train a seeded random sample of N finished runs for their first --steps steps on the CPU and compare every logged value; exit 1 unless all reproduce")
    p.add_argument("--steps", type=int, help="with --reproduce: steps to re-train (default 300, at most each run's own)")
    p.add_argument("--seed", type=int, default=0, help="with --reproduce: seed of the sample (the same seed picks the same runs)")
    a = p.parse_args(argv)
    for d in (a.dir, a.compare):
        if d is not None and not Path(d).is_dir():
            p.exit(2, f"error: {d} is not a folder; give the out_dir of a run or sweep\n")
    statuses = a.status.split(",") if a.status else None
    if a.check:
        sys.exit(_check_runs(Path(a.dir), statuses))
    from bnstudy.archive import PackError

    try:
        _modes(a, statuses)
    except PackError as e:  # a damaged pack: one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _modes(a, statuses: list[str] | None) -> None:
    """Every mode of ``bnstudy-runs`` but ``--check``."""
    import pandas as pd

    from bnstudy.analysis import load_runs

    if a.pack or a.unpack:
        sys.exit(_pack(Path(a.dir), a.unpack))
    if a.stale:
        return _stale_runs(Path(a.dir), statuses)
    if a.reproduce is not None:
        from bnstudy.reproduce import main as reproduce

        sys.exit(reproduce(Path(a.dir), a.reproduce, a.steps, a.seed))
    if a.compare:
        from bnstudy.analysis.compare import report as compare_report

        lines, ok = compare_report(a.dir, a.compare)
        print("\n".join(lines))
        sys.exit(0 if ok else 1)
    df = load_runs(a.dir)
    if len(df):
        df["status"] = [_listed_status(Path(d), s) for d, s in zip(df["run_dir"], df["status"])]
    if statuses and len(df):
        df = df[df["status"].isin(statuses)]
    if df.empty:
        print(f"no runs under {a.dir}" + (f" with status {a.status}" if a.status else ""))
        return
    cols = [c for c in ["run", "data", "model", "norm", "optim", "lr", "batch_size", "depth", "width", "activation", "seed", "status", "step", "final_test_acc", "commit"] if c in df.columns]
    out = df[cols].sort_values([c for c in ["data", "model", "norm", "lr", "seed"] if c in cols])
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(out.to_csv(index=False) if a.csv else out.to_string(index=False))
    counts = df["status"].value_counts().to_dict()
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), file=sys.stderr)


def _listed_status(run_dir: Path, status: str) -> str:
    """A run folder's status for the listing: "damaged" (with one line on stderr) where ``--check`` finds it damaged.

    Packed runs are not read one by one here (that is ``--check``'s work): the listing refuses a pack whose lines
    do not pass their checks.
    """
    from bnstudy.runs import check_run

    if not (run_dir / "summary.json").is_file():
        return status
    problems = check_run(run_dir)
    if not problems:
        return status
    print(f"damaged {run_dir} (says {status}): {'; '.join(problems)}", file=sys.stderr)
    return "damaged"


def _run_folders(root: Path, statuses: list[str] | None, skip: set[Path] = frozenset()):
    """(run folder, its path relative to root, its summary or None when unreadable), folders and packs alike, filtered by
    status; the runs of the packs in ``skip`` (resolved folders) are left out."""
    from bnstudy.archive import iter_runs

    for rec in iter_runs(root, skip_packs=skip):
        s = rec.summary
        if statuses and (not isinstance(s, dict) or s.get("status") not in statuses):
            continue
        yield rec.dir, rec.rel, s


def _pack(root: Path, unpack: bool) -> int:
    """``bnstudy-runs DIR --pack`` / ``--unpack``: one line saying what was done; 2 when it cannot be, 1 when a write fails (a full disk)."""
    from bnstudy.archive import PackError
    from bnstudy.archive_write import pack, unpack as unpack_
    from bnstudy.errors import no_space

    try:
        if unpack:
            n = unpack_(root)
            print(f"unpacked {n} run(s) into folders under {root}")
            return 0
        n, left = pack(root)
    except PackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, most often: what was written is gone again, so the same command can be rerun
        what, done = ("unpack", "unpacked (the pack is kept)") if unpack else ("pack", "packed (the run folders and any pack are as they were)")
        if no_space(e) or "[errno 28]" in str(e).lower():  # pyarrow names the errno only in its message
            print(f"error: no space left on the device holding {root}: nothing was {done}; free some and run the same "
                  "command again", file=sys.stderr)
        else:
            print(f"error: cannot {what} {root}: {type(e).__name__}: {e}; nothing was {done}", file=sys.stderr)
        return 1
    for line in left:
        print(line, file=sys.stderr)
    print(f"{root}: {n} run(s) in runs.jsonl + metrics.parquet" + (f"; {len(left)} folder(s) left as they were (above)" if left else ""))
    return 0


def _check_runs(root: Path, statuses: list[str] | None) -> int:
    """``bnstudy-runs --check``: one line per damaged run or pack; 1 if any is damaged."""
    from bnstudy.archive import PackError, load_pack
    from bnstudy.archive_write import find_packs, pack_damage
    from bnstudy.runs import check_run

    n = damaged = 0
    unread: set[Path] = set()
    packed: dict[str, list[str]] = {}
    for d in find_packs(root):
        whole, runs = pack_damage(d)
        for line in whole:
            print(f"damaged pack {d}: {line}")
        if whole:
            damaged += 1
            unread.add(d.resolve())  # its runs cannot be read one by one: the lines above say why
        else:
            for e in load_pack(d).entries:  # each packed run checked with its pack: its problems, or none
                packed[str((d / e["run"]).resolve())] = runs.get(e["run"], [])
    try:
        found = list(_run_folders(root, statuses, skip=unread))
    except PackError as e:
        print(f"damaged pack: {e}")
        return 1
    for d, rel, s in found:
        n += 1
        key = str(d.resolve())
        if key in packed and not (d / "summary.json").exists():
            problems = packed[key]  # checked with its pack above
        else:
            try:
                problems = check_run(d, s if isinstance(s, dict) else None)
            except PackError as e:
                problems = [str(e)]
        if problems:
            damaged += 1
            print(f"damaged {rel}: {'; '.join(problems)}")
    if n == 0:
        if damaged:
            print(f"{damaged} damaged pack(s) under {root}; restore them from git", file=sys.stderr)
        else:
            print(f"no runs under {root}" + (f" with status {','.join(statuses)}" if statuses else ""))
        return 1 if damaged else 0
    print(f"{n} run(s) checked: {damaged} damaged" + (" (a sweep retrains a damaged run folder and refuses a damaged pack; `bnstudy-report` leaves a damaged run out)" if damaged else ", all intact"), file=sys.stderr)
    return 1 if damaged else 0


def _stale_runs(root: Path, statuses: list[str] | None) -> None:
    """``bnstudy-runs --stale``: the runs whose recorded training code differs from this checkout's."""
    from bnstudy.archive_write import refuse_damaged
    from bnstudy.provenance import commit_label, stale_files

    refuse_damaged(root)
    stale = current = unknown = 0
    for _, rel, s in _run_folders(root, statuses):
        changed = stale_files(s) if isinstance(s, dict) else None
        if changed is None:
            unknown += 1
        elif not changed:
            current += 1
        else:
            stale += 1
            print(f"stale {rel} ({s.get('status')}, commit {commit_label(s)}): changed since: {', '.join(changed)}")
    print(
        f"{stale} stale, {current} current, {unknown} unknown (no code fingerprint in summary.json: trained before "
        "provenance was recorded, or unreadable)" + ("; force=true retrains a stale run" if stale else ""),
        file=sys.stderr,
    )


def report(argv: list[str] | None = None) -> None:
    """``bnstudy-report DIR [--out OUT]``: tables, figures and report.md for the runs under DIR."""
    from bnstudy.analysis.report import main

    main(argv)
