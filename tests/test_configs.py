"""Every config in conf/ and experiments/ composes and runs a few steps on synthetic data."""
from pathlib import Path

import pytest
import torch

from bnstudy.cli import run_job
from bnstudy.runs import read_summary
from bnstudy.train import precision

from .conftest import PLUGIN_CONFS, ROOT, compose

GROUPS = ["data", "model", "norm", "optim", "sched"]
OPTIONS = [(g, p.stem) for g in GROUPS for d in (ROOT / "conf", *PLUGIN_CONFS) for p in sorted((d / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
SHRINK = ["train.steps=4", "train.eval_every=2", "train.log_every=2", "train.eval_batch_size=64", "train.progress=off"]


def run_dirs(out: Path) -> list[Path]:
    return [p.parent for p in out.glob("**/summary.json")]


@pytest.mark.parametrize(
    "group,option",
    [pytest.param(g, o, id=f"{g}={o}", marks=[pytest.mark.variants] if g == "norm" else []) for g, o in OPTIONS],
)
def test_group_option_runs(group, option, tmp_path, tmp_data):
    overrides = [f"{group}={option}", f"out_dir={tmp_path}", *SHRINK]
    if group != "data":
        overrides.append("data=synthetic")
    else:
        overrides += ["data.name=synthetic"]  # the option's other keys still apply
    if group == "data" and option.startswith("cifar"):
        overrides += ["data.channels=3", "data.size=32"]
    cfg = compose(overrides)
    assert run_job(cfg) == "completed"
    (run,) = run_dirs(tmp_path)
    assert read_summary(run)["status"] == "completed"
    assert {"config.yaml", "metrics.csv", "summary.json"} <= {p.name for p in run.iterdir()}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs(name, tmp_path, tmp_data):
    lines = (ROOT / "experiments" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    text = [line for line in lines if line.startswith("#") and not line.startswith("# @")]
    assert text[0].startswith("# bnstudy-train"), "an experiment's first comment is the command that runs it"
    assert text[1].startswith("# Hypothesis"), "an experiment's second comment states its hypothesis"
    cfg = compose([f"experiment={name}"])
    shape = ["data.channels=3", "data.size=32"] if str(cfg.data.name).startswith("cifar") else []
    # synthetic at 512 training and 128 test examples (64 held out where the study validates): each split is still evaluated
    val = ["data.val_size=64"] if cfg.data.val_size else []
    small = ["data.train_size=512", "data.test_size=128"]
    # full-width studies are heavy on a CPU: a small batch and one precise-statistics batch still run every code path
    light = [f"train.batch_size={min(cfg.train.batch_size, 32)}"] + (["train.precise_bn=1"] if cfg.train.precise_bn else [])
    if cfg.train.amp and precision.cpu_bf16() is not None and not torch.cuda.is_available():
        light.append("train.amp=false")  # refused on a CPU that would emulate bf16 (tests/test_precision.py)
    cfg = compose([f"experiment={name}", "data.name=synthetic", *shape, *small, *val, *light, f"out_dir={tmp_path}", *SHRINK])
    assert cfg.study == name
    assert run_job(cfg) == "completed"
    assert len(run_dirs(tmp_path)) == 1


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_swept_values_reach_the_run(name):
    """A value swept by an experiment must not be overwritten by the experiment's own settings."""
    import yaml
    from omegaconf import OmegaConf

    doc = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
    params = (doc.get("hydra") or {}).get("sweeper", {}).get("params", {})
    for key, values in params.items():
        last = str(values).split(",")[-1].strip()
        cfg = compose([f"experiment={name}", f"{key}={last}"])
        if key in GROUPS:
            assert cfg[key].name == last, f"{name}: {key}={last} is overridden by the experiment"
        else:
            got, want = OmegaConf.select(cfg, key), yaml.safe_load(last)
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                assert float(got) == float(want), f"{name}: {key}={last} lost"  # the schema makes lr=10 a float
            else:
                assert str(got) == str(want), f"{name}: {key}={last} lost"



def study_commands(name: str) -> dict[str, dict[str, str]]:
    """Each ``bnstudy-train -m`` command in an experiment's comments, by its out_dir: {key: value}, launcher keys left out."""
    import re
    import shlex

    commands: dict[str, dict[str, str]] = {}
    for line in (ROOT / "experiments" / f"{name}.yaml").read_text().splitlines():
        m = re.match(r"#.*?bnstudy-train -m (.*?)(?:\s{3}|$)", line)
        if m:
            args = dict(a.split("=", 1) for a in shlex.split(m.group(1)) if not a.startswith(("hydra", "train.threads")))
            commands[str(compose(one_run(args)).out_dir)] = args
    return commands


def one_run(args: dict[str, str], **values: str) -> list[str]:
    """The overrides of one run of a command: the last value of each swept key, then ``values`` (dots as ``__``)."""
    merged = {k: v.split(",")[-1] for k, v in args.items()} | {k.replace("__", "."): v for k, v in values.items()}
    return [f"{k}={v}" for k, v in merged.items()]


def name_of(overrides: list[str]) -> str:
    from omegaconf import OmegaConf

    from bnstudy.config import run_name

    cfg = OmegaConf.to_container(compose(overrides), resolve=False)
    cfg.pop("hydra", None)
    return run_name(cfg)


def identity_of(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from bnstudy.config import identity

    return identity({k: v for k, v in OmegaConf.to_container(compose(overrides), resolve=False).items() if k != "hydra"})


PARTS = {
    "decompose": ["results/decompose/mlp", "results/decompose/deep_sigmoid", "results/decompose/vgg", "results/decompose/resnet"],
    "optimizer": ["results/optimizer/mlp", "results/optimizer/cnn", "results/optimizer/vgg"],
}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_each_part_of_a_study_composes_and_runs(name, tmp_path, tmp_data):
    """Every command in the study's comments composes to its own folder and runs a few steps (its last swept values)."""
    commands = study_commands(name)
    assert list(commands) == PARTS[name]
    for out_dir, args in commands.items():
        cfg = compose(one_run(args))
        assert cfg.study == name and cfg.out_dir == out_dir
        shape = ["data.channels=3", "data.size=32"] if str(cfg.data.name).startswith("cifar") else []
        small = ["data.name=synthetic", "data.train_size=512", "data.test_size=128", "train.batch_size=32"]
        val = ["data.val_size=64"] if cfg.data.val_size else []
        light = ["train.precise_bn=1"] if cfg.train.precise_bn else []
        light += ["probe.every=2", "probe.batch_size=64"] if cfg.probe.every else []
        shrunk = dict(a.split("=", 1) for a in [*shape, *small, *val, *light, *SHRINK, f"out_dir={tmp_path / out_dir}"])
        assert run_job(compose(one_run(args | shrunk))) == "completed", out_dir
    assert len(run_dirs(tmp_path)) == len(PARTS[name])


def test_decompose_parts_train_exactly_the_committed_studies_they_compare_with():
    # a part that compares with (or stands in for) a committed study's bn, affine and none runs names
    # the same run folders as that study: every setting but the swept variant is the same
    parts = study_commands("decompose")
    for norm in ("bn", "affine", "none"):
        mlp = one_run(parts["results/decompose/mlp"], norm=norm, optim__lr="10.0")
        assert name_of(mlp) == name_of(["experiment=effective_lr", f"norm={norm}", "optim.lr=10.0", "optim.weight_decay=0.0"])
        vgg = one_run(parts["results/decompose/vgg"], norm=norm, optim__lr="0.02")
        assert name_of(vgg) == name_of(["experiment=vgg_tuned", f"norm={norm}", "optim.lr=0.02"])
        resnet = one_run(parts["results/decompose/resnet"], norm=norm, probe__every="0")  # probes aside
        assert name_of(resnet) == name_of(["experiment=skipinit", f"norm={norm}"])
    assert name_of(one_run(parts["results/decompose/resnet"], norm="bn")) != name_of(["experiment=skipinit", "norm=bn"])


@pytest.mark.parametrize("part,sgd", [("mlp", "mnist_tuned"), ("cnn", "fashion_tuned"), ("vgg", "vgg_tuned")])
def test_optimizer_parts_change_only_the_optimizer(part, sgd):
    """Each part of the optimizer study is an SGD study's config with Adam in place of SGD: every other key is the same."""
    args = study_commands("optimizer")[f"results/optimizer/{part}"]
    step = {"optim.name", "optim.lr", "optim.momentum", "optim.nesterov", "optim.betas"}
    for norm in ("bn", "affine", "none"):
        adam = identity_of(one_run(args, norm=norm))
        assert adam["optim.name"] == "adam"
        sgd_run = identity_of([f"experiment={sgd}", f"norm={norm}"])
        assert {k: v for k, v in adam.items() if k not in step} == {k: v for k, v in sgd_run.items() if k not in step}
