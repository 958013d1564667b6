"""The written docs: README length, every relative link and image, each claim in its page, the site's menu and build."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

# a link or image: [text](target) or ![alt](target), the target up to a space (a title) or the closing paren
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def pages() -> list[Path]:
    """Every Markdown page a reader follows links in: the README, docs/, the results pages and the study reports."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted(p for p in (ROOT / "results").rglob("*.md") if not _skipped(p))
    return found


def _skipped(p: Path) -> bool:
    rel = p.relative_to(ROOT / "results").as_posix()
    return rel.startswith(("runs/", "resnet_full/long"))  # work in progress, not committed pages


def links(text: str) -> list[str]:
    """Targets of the links and images of a Markdown text, outside code blocks and code spans."""
    text = CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {github_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)}


def broken(page: Path) -> list[str]:
    """Each relative link or image of ``page`` whose file (or heading) does not exist, as 'target: why'."""
    out = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        if not dest.exists():
            out.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            out.append(f"{target}: no heading #{frag} in {dest.relative_to(ROOT)}")
        elif not dest.is_relative_to(ROOT):
            out.append(f"{target}: outside the repository")
    return out


def test_link_checker_finds_what_is_broken(tmp_path):
    """The checker itself: a missing file, a missing image and a missing heading are found; code is not read."""
    (tmp_path / "there.md").write_text("# A heading: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) ![img](gone.png) [x](nothere.md)\n"
        "[bad anchor](there.md#nope) `[not a link](gone.md)`\n```\n[in code](gone.md)\n```\n[web](https://example.org)\n"
    )
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        found = broken(page)
    finally:
        ROOT = old
    assert found == ["gone.png: no such file", "nothere.md: no such file", "there.md#nope: no heading #nope in there.md"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(page):
    assert broken(page) == []


def test_readme_fits_a_newcomer():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the rest belongs in docs/"


def claim_pages() -> list[Path]:
    return sorted((ROOT / "results" / "claims").glob("[0-9][0-9]-*.md"))


def test_each_claim_has_its_own_page_linked_from_the_answer():
    numbers = [int(p.name[:2]) for p in claim_pages()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 18
    answer = (ROOT / "results" / "README.md").read_text(encoding="utf-8")
    linked = set(links(answer))
    for p in claim_pages():
        first = p.read_text(encoding="utf-8").splitlines()[0]
        assert re.match(rf"# {int(p.name[:2])}\. \S", first), f"{p.name} opens with {first!r}"
        assert f"claims/{p.name}" in linked, f"results/README.md does not link {p.name}"


def test_claims_show_their_figures():
    """Each claim page shows at least one figure, and each figure it links it also shows."""
    for p in claim_pages():
        text = p.read_text(encoding="utf-8")
        shown = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text))
        linked = {t for t in links(text) if t.endswith(".png")}
        assert shown, f"{p.name} shows no figure"
        assert linked <= shown, f"{p.name} links figures it does not show: {sorted(linked - shown)}"


def site_config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !ENV and python tags: not needed here
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)


def nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_files(value) if isinstance(value, list) else [value]
    return out


def test_site_menu_lists_every_page():
    """Every docs page, results page and claim is in the site's menu, and every menu entry is a file."""
    cfg = site_config()
    src = ROOT / cfg["docs_dir"]
    listed = nav_files(cfg["nav"])
    assert len(listed) == len(set(listed))
    for f in listed:
        assert (src / f).is_file(), f"menu entry {f} is not a file under {cfg['docs_dir']}/"
    expected = {"README.md"} | {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    expected |= {f"results/{p.name}" for p in (ROOT / "results").glob("*.md")}
    expected |= {f"results/claims/{p.name}" for p in claim_pages()}
    assert expected - set(listed) == set()


def test_site_source_links_the_repository():
    """site-src/ is three links into the repository, so pages keep their GitHub-relative links on the site."""
    src = ROOT / "site-src"
    assert {p.name: p.resolve() for p in src.iterdir()} == {
        "README.md": ROOT / "README.md",
        "docs": ROOT / "docs",
        "results": ROOT / "results",
    }


def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`, as `make docs` runs it: a broken link, image, anchor or menu entry fails."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs installs it)")
    pytest.importorskip("material", reason="the docs extra is not installed (make docs installs it)")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "results/index.html", "results/claims/18-resnet-full.html", "docs/determinism.html"):
        assert (site / page).is_file(), page
    assert (site / "results/quickstart/figures/test_acc_vs_step.png").is_file()
    assert not list(site.rglob("*.parquet")) and not list(site.rglob("*.jsonl"))
    shutil.rmtree(site)
