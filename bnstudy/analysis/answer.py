"""The answer on one screen: the headline gaps to ``bn``, computed from the packed studies.

Each row of :data:`CLAIMS` is one claim of ``results/README.md``: the gap it
rests on (a variant minus ``bn`` in one setting of one study), the same gap
under a fair baseline (each variant at its own learning rate, chosen on a
validation split, with an init suited to the network), and the gap at the
largest scale this project ran for that network. :func:`answer` computes every
gap from the runs (final test accuracy, the precise-statistics one where a run
has it; each variant's rate chosen on validation where a gap says ``tuned``),
:func:`answer_table` writes the table and :func:`answer_figure` draws them all,
grouped by network and scale, with 0 marked. ``bnstudy-report --answer``
writes both into ``results/README.md`` and ``results/answer/``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bnstudy.analysis.aggregate import Welch, choose_rates, welch
from bnstudy.analysis.ladder import final_test_accuracy
from bnstudy.analysis.load import load_runs
from bnstudy.analysis.style import color
from bnstudy.runs import DONE

BEGIN, END = "<!-- answer:begin -->", "<!-- answer:end -->"
FIGURE = "answer/gaps"  # results/answer/gaps.png and .svg
X_RANGE = (-0.25, 0.08)  # the figure's x axis: gaps that matter; a variant that did not train is marked at the edge


@dataclass(frozen=True)
class Gap:
    """One variant minus ``bn`` in one setting of one packed study (a folder under ``results/``)."""

    study: str
    variant: str
    network: str  # the group in the figure: network and scale
    setting: str  # what else fixes the comparison, in words
    where: dict = field(default_factory=dict)  # factors both sides share
    variant_where: dict = field(default_factory=dict)  # factors of the variant's side only
    reference_where: dict = field(default_factory=dict)  # factors of bn's side only
    reference_study: str | None = None  # bn's runs come from another study (the same recipe)
    tuned: bool = False  # each side at its own lr, chosen on validation
    precise: bool = True  # bn read with its precise statistics where its runs have them


@dataclass(frozen=True)
class Claim:
    """A row of the answer: the claim, its section, its headline gap, and the gap under a fair baseline and at scale."""

    claim: str
    section: str  # results/claims/NN-name.md
    headline: Gap
    fair: Gap | None = None  # None: the headline is itself at a fair baseline
    largest: Gap | None = None  # None: nothing larger was run for this network
    largest_note: str = "not run larger"


MLP = "MNIST MLP (3 x 100 sigmoid), 5,000 steps"
MLP_LONG = "MNIST MLP (3 x 100 sigmoid), 50,000 steps"
DEEP = "MNIST MLP, 8 sigmoid layers, 5,000 steps"
CNN = "Fashion-MNIST CNN, 3,000 steps"
VGG = "VGG-11 at 1/8 width, CIFAR-10, 4 epochs"
RES_SMALL = "ResNet-20 at width 8, CIFAR-10, 2.6 epochs"
RES_10 = "ResNet-20 full width, CIFAR-10, 10 epochs"
RES_30 = "ResNet-20 full width, CIFAR-10, 30 epochs (GPU)"

_RES30_AFFINE = Gap("resnet_full/gpu", "affine", RES_30, "zero-init branches, rate chosen at 10 epochs", variant_where={"zero_init_residual": True})

CLAIMS: list[Claim] = [
    Claim(
        "BN beats γx + β on the MNIST MLP",
        "claims/04-learning-rate.md",
        Gap("ioffe_mnist", "affine", MLP_LONG, "default init, one shared lr 0.5"),
        fair=Gap("mnist_tuned", "affine", MLP, "Xavier init", tuned=True),
        largest_note="it is the longest MLP run",
    ),
    Claim(
        "BN trains at the top of the rate range",
        "claims/04-learning-rate.md",
        Gap("lr_sensitivity", "affine", MLP, "default init, lr 10", where={"lr": 10.0}),
        fair=Gap("mnist_tuned", "affine", MLP, "Xavier init, lr 10", where={"lr": 10.0}),
    ),
    Claim(
        "Deep sigmoid stacks need BN",
        "claims/05-depth.md",
        Gap("depth", "affine", DEEP, "default init, lr 0.1", where={"depth": 8, "activation": "sigmoid", "init": "default", "lr": 0.1}),
        fair=Gap("depth", "affine", DEEP, "Xavier init, lr 1", where={"depth": 8, "activation": "sigmoid", "init": "xavier", "lr": 1.0}),
    ),
    Claim(
        "No gap resolved on the Fashion CNN",
        "claims/06-fashion-cnn.md",
        Gap("fashion_cnn", "affine", CNN, "default init, one shared lr 0.05", reference_where={"precise_bn": True}),
        fair=Gap("fashion_tuned", "affine", CNN, "He init, precise BN", tuned=True),
    ),
    Claim(
        "BN leads on the VGG",
        "claims/07-vgg.md",
        Gap("cifar_vgg", "affine", VGG, "default init, lr 0.02", where={"init": "default", "lr": 0.02}),
        fair=Gap("vgg_tuned", "affine", VGG, "He init, precise BN", tuned=True),
    ),
    Claim(
        "BN with injected noise loses BN's VGG lead, as γx + β does",
        "claims/07-vgg.md",
        Gap("vgg_tuned", "noisy_bn", VGG, "He init, precise BN", tuned=True),
    ),
    Claim(
        "BN's VGG lead survives Adam",
        "claims/17-optimizer.md",
        Gap("optimizer/vgg", "affine", VGG, "Adam, He init, precise BN", tuned=True),
    ),
    Claim(
        "Centering alone is BN on the VGG",
        "claims/16-centering-scaling.md",
        Gap("decompose/vgg", "bn_center", VGG, "He init, precise BN", reference_study="vgg_tuned", tuned=True),
    ),
    Claim(
        "Scaling alone is not",
        "claims/16-centering-scaling.md",
        Gap("decompose/vgg", "bn_scale", VGG, "He init, precise BN", reference_study="vgg_tuned", tuned=True),
    ),
    Claim(
        "A residual net without BN trails even with zero-init branches",
        "claims/15-resnet-small.md",
        Gap("skipinit", "affine", RES_SMALL, "He init, zero-init branches, one shared lr 0.05", variant_where={"zero_init_residual": True}, precise=False),
        fair=Gap("resnet_full/mid", "affine", RES_10, "zero-init branches", variant_where={"zero_init_residual": True}),
        largest=_RES30_AFFINE,
    ),
    Claim(
        "No normalization at all, at scale",
        "claims/18-resnet-full.md",
        Gap("resnet_full/mid_rate_check", "none", RES_10, "zero-init branches at lr 0.1", reference_study="resnet_full/mid"),
        largest=Gap("resnet_full/gpu_rate_check", "none", RES_30, "zero-init branches at lr 0.1", reference_study="resnet_full/gpu"),
    ),
]


@dataclass(frozen=True)
class Measured:
    """A gap with its numbers: the difference of means, its 95% Welch interval, and the seeds on each side."""

    gap: Gap
    diff: float
    lo: float
    hi: float
    n: int
    n_ref: int
    lr: float | None  # the variant's rate (chosen on validation where tuned)
    lr_ref: float | None


def _match(runs: pd.DataFrame, where: dict) -> pd.DataFrame:
    mask = np.ones(len(runs), dtype=bool)
    for k, v in where.items():
        col = runs[k] if k in runs.columns else pd.Series([None] * len(runs), index=runs.index)
        if isinstance(v, bool):
            mask &= col.map(lambda x: str(x).lower() == str(v).lower()).to_numpy()
        elif isinstance(v, (int, float)):
            mask &= np.isclose(pd.to_numeric(col, errors="coerce").astype(float).to_numpy(), float(v))
        else:
            mask &= (col.astype(str) == str(v)).to_numpy()
    return runs[mask]


def _side(runs: pd.DataFrame, norm: str, where: dict, tuned: bool) -> tuple[pd.DataFrame, float | None]:
    """The finished runs of ``norm`` in the setting, at its validation-chosen rate when ``tuned``."""
    sub = _match(runs[(runs["norm"].astype(str) == norm) & runs["status"].isin(DONE)], where)
    if sub.empty:
        raise ValueError(f"no finished {norm} runs with {where}")
    if tuned:
        chosen = choose_rates(sub, by=["norm", "lr"])
        lr = float(chosen["lr"].iloc[0])
        sub = sub[np.isclose(sub["lr"].astype(float), lr)]
    rates = sorted(set(sub["lr"].astype(float))) if "lr" in sub.columns else []
    return sub, (rates[0] if len(rates) == 1 else None)


def measure(gap: Gap, results: str | Path = "results", cache: dict | None = None) -> Measured:
    """The gap's difference and 95% Welch interval from the study's runs (packed or in folders)."""
    cache = {} if cache is None else cache

    def runs_of(study: str) -> pd.DataFrame:
        if study not in cache:
            cache[study] = load_runs(Path(results) / study)
        return cache[study]

    var, lr = _side(runs_of(gap.study), gap.variant, {**gap.where, **gap.variant_where}, gap.tuned)
    ref, lr_ref = _side(runs_of(gap.reference_study or gap.study), "bn", {**gap.where, **gap.reference_where}, gap.tuned)
    a, b = accuracy(var, gap.precise), accuracy(ref, gap.precise)
    w: Welch = welch(a, b)
    return Measured(gap, w.diff, w.lo, w.hi, int(np.isfinite(a).sum()), int(np.isfinite(b).sum()), lr, lr_ref)


def accuracy(runs: pd.DataFrame, precise: bool) -> pd.Series:
    """Final test accuracy: the precise-statistics one where a run has it (``precise``), else the standard one."""
    return final_test_accuracy(runs) if precise else pd.to_numeric(runs["final_test_acc"], errors="coerce").astype(float)


def answer(results: str | Path = "results") -> list[tuple[Claim, Measured, Measured | None, Measured | None]]:
    """Every claim with its headline gap, its fair-baseline gap and its largest-scale gap, measured."""
    cache: dict = {}
    out = []
    for c in CLAIMS:
        h = measure(c.headline, results, cache)
        f = measure(c.fair, results, cache) if c.fair else None
        g = measure(c.largest, results, cache) if c.largest else None
        out.append((c, h, f, g))
    return out


def gap_text(m: Measured) -> str:
    """``−0.084 [−0.140, −0.028]``: the difference and its interval, a real minus sign; three decimals, or four
    where a bound would round to zero (so an interval that just reaches 0 reads as it is)."""
    vals = (m.diff, m.lo, m.hi)
    digits = 4 if any(math.isfinite(v) and v != 0 and round(v, 3) == 0 for v in vals) else 3

    def f(x: float) -> str:
        return "–" if not math.isfinite(x) else f"{x:+.{digits}f}".replace("-", "−")

    return f"{f(m.diff)} [{f(m.lo)}, {f(m.hi)}]"


def verdict(m: Measured) -> str:
    """Whether the interval excludes 0: ``BN ahead``, ``BN behind`` or ``no difference resolved``."""
    if not (math.isfinite(m.lo) and math.isfinite(m.hi)):
        return "no interval"
    if m.hi < 0:
        return "BN ahead"
    if m.lo > 0:
        return "BN behind"
    return "no difference resolved"


def describe(gap: Gap) -> str:
    """The setting of a gap in words, with how its rates were chosen."""
    return gap.setting + ("; own rates, chosen on validation" if gap.tuned else "")


def _holds(headline: Measured, other: Measured | None, none_text: str) -> str:
    """``yes`` where the other gap reaches the headline's verdict, else ``no``; with its numbers and setting."""
    if other is None:
        return none_text
    word = "yes" if verdict(other) == verdict(headline) else "no"
    where = [other.gap.network] if other.gap.network != headline.gap.network else []
    return f"{word}: {gap_text(other)} ({'; '.join([*where, describe(other.gap)])})"


def answer_table(rows) -> str:
    """The Markdown table of the answer (at most 12 rows)."""
    lines = [
        "| claim | network and scale | effect: variant − `bn` [95% CI] | holds under a fair baseline? | holds at the largest scale run? | section |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c, h, f, g in rows:
        fair = _holds(h, f, "measured under one" if h.gap.tuned else "not run")
        large = _holds(h, g, c.largest_note)
        sec = re.match(r"claims/(\d+)", c.section).group(1).lstrip("0")
        lines.append(
            f"| {c.claim} | {h.gap.network}; {describe(h.gap)} | `{h.gap.variant}`: {gap_text(h)} ({verdict(h)}) | {fair} | {large} | [§{sec}]({c.section}) |"
        )
    return "\n".join(lines)


def answer_figure(rows) -> Figure:
    """Every gap with its 95% interval, grouped by network and scale, 0 marked: a forest plot."""
    entries = []  # (network, label, measured, kind)
    seen = set()
    for c, h, f, g in rows:
        for m, kind in ((h, "as first measured"), (f, "fair baseline"), (g, "largest scale")):
            if m is None:
                continue
            key = (m.gap.study, m.gap.variant, tuple(sorted(m.gap.where.items())), tuple(sorted(m.gap.variant_where.items())))
            if key in seen:
                continue
            seen.add(key)
            entries.append((m.gap.network, f"{m.gap.variant} − bn: {m.gap.setting}" + (", own rates" if m.gap.tuned else ""), m, kind))
    order = list(dict.fromkeys(e[0] for e in entries))
    entries.sort(key=lambda e: order.index(e[0]))
    n = len(entries) + len(order)
    fig = Figure(figsize=(10.0, 0.3 * n + 1.5), layout="constrained")
    ax = fig.subplots()
    y = 0.0
    ticks, labels, groups = [], [], []
    markers = {"as first measured": "o", "fair baseline": "s", "largest scale": "D"}
    lo_lim, hi_lim = X_RANGE
    for net in order:
        groups.append((y, net))
        y -= 1
        for e in (e for e in entries if e[0] == net):
            m = e[2]
            c = color(m.gap.variant)
            if m.hi < lo_lim:  # a variant that did not train: off the scale, marked at its edge
                ax.plot([lo_lim], [y], marker="<", color=c, ms=7, clip_on=False)
            else:
                lo, hi = max(m.lo, lo_lim), min(m.hi, hi_lim)
                ax.plot([lo, hi], [y, y], color=c, lw=1.6, solid_capstyle="butt")
                ax.plot([m.diff], [y], marker=markers[e[3]], color=c, ms=5.5, ls="")
            ax.text(1.01, y, gap_text(m), transform=ax.get_yaxis_transform(), va="center", fontsize=8, family="monospace")
            ticks.append(y)
            labels.append(e[1])
            y -= 1
    ax.set_xlim(lo_lim, hi_lim)
    ax.axvline(0.0, color="k", lw=1.0)
    ax.set_yticks(ticks, labels, fontsize=8)
    for gy, net in groups:
        ax.text(0.0, gy, net, transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=9, fontweight="bold")
    ax.set_ylim(y + 0.5, 0.7)
    ax.set_xlabel(f"variant − bn, final test accuracy (fraction correct; < 0: bn ahead; ◀: below {lo_lim:g}, off the scale)")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color="0.3", marker=mk, ls="", ms=5) for mk in markers.values()]
    fig.legend(handles, list(markers), loc="outside lower center", ncol=3, frameon=False, fontsize=8)
    fig.suptitle("Each headline gap to bn with its 95% Welch interval over seeds", fontsize=10)
    return fig


COLUMNS = ["claim", "kind", "network", "setting", "study", "variant", "tuned", "diff", "lo", "hi", "n", "n_ref", "lr", "lr_ref"]


def tidy(rows) -> pd.DataFrame:
    """One line per measured gap (``kind``: headline, fair, largest), the numbers at full precision."""
    out = []
    for c, h, f, g in rows:
        for m, kind in ((h, "headline"), (f, "fair"), (g, "largest")):
            if m is not None:
                out.append((c.claim, kind, m.gap.network, m.gap.setting, m.gap.study, m.gap.variant, m.gap.tuned,
                            m.diff, m.lo, m.hi, m.n, m.n_ref, m.lr, m.lr_ref))  # fmt: skip
    return pd.DataFrame(out, columns=COLUMNS)


CAPTION = (
    "Each gap: the variant's mean final test accuracy minus `bn`'s in the same setting, with the 95% Welch "
    "interval of that difference over seeds (3 to 5 a side; precise statistics for `bn` where its runs have them). "
    "Circles: the gap as the claim was first measured; squares: under a fair baseline; diamonds: at the largest "
    "scale run. Left of the line `bn` is ahead. Regenerated, with the table, by `bnstudy-report results --answer`."
)


def block(rows, figure: str = FIGURE) -> str:
    """What stands between the answer markers in results/README.md: the table, the figure and its caption."""
    return f"{answer_table(rows)}\n\n![each headline gap to bn with its interval]({figure}.png)\n\n{CAPTION}"


def write_answer(results: str | Path = "results", readme: str | Path | None = None) -> list[Path]:
    """Measure every gap, draw the figure into ``results/answer/``, and put the table into the README's answer block."""
    from bnstudy.analysis.plots import save_figure

    results = Path(results)
    readme = Path(readme) if readme is not None else results / "README.md"
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme} has no answer block: one line {BEGIN} and, below it, one line {END}")
    rows = answer(results)
    folder, name = (results / FIGURE).parent, Path(FIGURE).name
    paths = save_figure(answer_figure(rows), folder, name, formats=("png", "svg"))
    tidy(rows).to_csv(folder / f"{name}.csv", index=False)
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{BEGIN}\n{block(rows)}\n{END}{tail}", encoding="utf-8")
    return [*paths, folder / f"{name}.csv", readme]
