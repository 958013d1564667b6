"""The answer on one screen: every number of the table in results/README.md is what `bnstudy-report --answer` computes
from the committed packs, and the figure and its numbers file are regenerated with it."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bnstudy.analysis import answer as ans

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
NUMBER = re.compile(r"[+−-]?\d+\.\d+")


@pytest.fixture(scope="module")
def rows():
    return ans.answer(RESULTS)


def committed_block() -> str:
    text = (RESULTS / "README.md").read_text(encoding="utf-8")
    return text.split(ans.BEGIN, 1)[1].split(ans.END, 1)[0].strip("\n")


def table_rows(block: str) -> list[list[str]]:
    lines = [l for l in block.splitlines() if l.startswith("| ")][2:]  # past the header and its rule
    return [[c.strip() for c in l.strip("|").split(" | ")] for l in lines]


def numbers(cell: str) -> list[float]:
    return [float(x.replace("−", "-")) for x in NUMBER.findall(cell)]


def expected_numbers(m) -> list[float]:
    """The three numbers a cell shows for a measured gap, at the precision the table prints them."""
    return [float(x.replace("−", "-")) for x in NUMBER.findall(ans.gap_text(m))]


def test_the_answer_fits_one_screen(rows):
    assert 1 <= len(rows) <= 12
    assert len(table_rows(committed_block())) == len(rows)


def test_each_number_in_the_table_is_the_commands_output(rows):
    """Row by row, cell by cell: the effect, the fair-baseline gap and the largest-scale gap equal the measured ones."""
    table = table_rows(committed_block())
    for cells, (claim, h, f, g) in zip(table, rows):
        assert cells[0] == claim.claim
        effect, fair, largest = cells[2], cells[3], cells[4]
        assert numbers(effect) == pytest.approx(expected_numbers(h), abs=0), (claim.claim, effect)
        for cell, m in ((fair, f), (largest, g)):
            if m is None:
                assert not NUMBER.search(cell.split("(")[0]), (claim.claim, cell)
            else:
                assert numbers(cell)[:3] == pytest.approx(expected_numbers(m), abs=0), (claim.claim, cell)
        shown = [round(v, 4) for v in numbers(effect)]
        assert shown[1] <= shown[0] <= shown[2]


def test_the_block_is_regenerated_not_edited(rows):
    """The whole block (table, figure link, caption) is exactly what the command writes."""
    assert committed_block() == ans.block(rows)


def test_the_numbers_file_holds_the_measured_gaps(rows):
    saved = pd.read_csv(RESULTS / "answer" / "gaps.csv")
    fresh = ans.tidy(rows)
    assert list(saved.columns) == ans.COLUMNS and len(saved) == len(fresh)
    for col in ("diff", "lo", "hi"):
        assert saved[col].to_numpy() == pytest.approx(fresh[col].to_numpy(), rel=1e-12)
    assert saved["study"].tolist() == fresh["study"].tolist()
    for ext in ("png", "svg"):
        assert (RESULTS / "answer" / f"gaps.{ext}").stat().st_size > 1000


def test_gaps_match_the_studies_own_difference_tables(rows):
    """An untuned headline gap is the one its study's report states (differences.csv, written by bnstudy-report)."""
    h = rows[0][1]  # ioffe_mnist: affine − bn, one setting
    d = pd.read_csv(RESULTS / h.gap.study / "differences.csv")
    r = d[(d["norm"] == "affine") & (d["metric"] == "final_test_acc")].iloc[0]
    assert (h.diff, h.lo, h.hi) == pytest.approx((r["diff"], r["diff_lo"], r["diff_hi"]), rel=1e-9)


def test_a_hand_edited_number_is_caught(rows):
    block = ans.block(rows)
    first = table_rows(block)[0]
    edited = block.replace(first[2], first[2].replace(ans.gap_text(rows[0][1]).split(" ")[0], "−0.999"), 1)
    cells = table_rows(edited)[0]
    assert numbers(cells[2]) != expected_numbers(rows[0][1])


def test_gap_text_keeps_an_interval_that_reaches_zero_visible():
    m = ans.Measured(ans.CLAIMS[0].headline, -0.0033, -0.0071, 0.0004, 5, 5, 1.0, 3.0)
    assert ans.gap_text(m) == "−0.0033 [−0.0071, +0.0004]"
    assert ans.verdict(m) == "no difference resolved"
    m = ans.Measured(ans.CLAIMS[0].headline, -0.084, -0.14, -0.028, 3, 3, None, None)
    assert ans.gap_text(m) == "−0.084 [−0.140, −0.028]" and ans.verdict(m) == "BN ahead"
    m = ans.Measured(ans.CLAIMS[0].headline, -0.1, math.nan, math.nan, 1, 3, None, None)
    assert ans.verdict(m) == "no interval"


def test_write_answer_refuses_a_readme_without_its_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# results\n")
    with pytest.raises(ValueError, match="no answer block"):
        ans.write_answer(RESULTS, readme=readme)
    assert readme.read_text() == "# results\n"
    assert not (tmp_path / "answer").exists()


def test_write_answer_rewrites_only_the_block(tmp_path):
    """Into a copy of the README: the text around the markers is kept; what is between them is replaced."""
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{ans.BEGIN}\nstale table\n{ans.END}\nafter\n")
    studies = {c.headline.study for c in ans.CLAIMS} | {g.study for c in ans.CLAIMS for g in (c.fair, c.largest) if g}
    studies |= {g.reference_study for c in ans.CLAIMS for g in (c.headline, c.fair, c.largest) if g and g.reference_study}
    for s in studies:  # only the packs the answer reads
        for name in ("runs.jsonl", "metrics.parquet"):
            src = RESULTS / s / name
            if src.exists():
                (tmp_path / s).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, tmp_path / s / name)
    ans.write_answer(tmp_path, readme=readme)
    text = readme.read_text()
    assert text.startswith(f"before\n{ans.BEGIN}\n| claim |") and text.endswith(f"{ans.END}\nafter\n")
    assert "stale table" not in text
    assert (tmp_path / "answer" / "gaps.png").is_file()
