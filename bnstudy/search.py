"""``bnstudy-search``: each variant's learning rate tuned on the validation split by Optuna, hopeless rates pruned early.

    bnstudy-search experiment=mnist_tuned seed=0 out_dir=results/mnist_search train.threads=1 --trials 8

The command line is ``bnstudy-train``'s: the same config, overrides and experiments. What the
experiment sweeps (``hydra.sweeper.params``, or a sweep typed on the command line) is read the
way Hydra's basic sweeper reads it, with three roles:

- ``optim.lr``: the range searched (log-uniform from the smallest to the largest rate listed, or
  ``optim.lr=interval(LOW,HIGH)``); a trial's rate is rounded to ``--digits`` significant digits, so
  run folders keep readable names and a rate asked for twice names the same runs;
- ``seed``: the seeds each trial trains; its value is their mean final validation accuracy (a diverged
  seed without one scores 0), the score the report's "tuned per variant" table chooses by;
- every other swept key (``norm``): one Optuna study per combination, a *setting*.

A trial trains ordinary runs through the job ``bnstudy-train`` runs (:func:`bnstudy.cli.job.run_job`),
in this process, one at a time: named by their config, skipped when finished, resumed when
interrupted, listed and reported like any other run. The pruner (Optuna's median rule) reads the
validation accuracy the run logs at each evaluation (``train.eval_every``) and stops a trial whose
accuracy is below the median of the earlier trials' at the same step; a pruned trial's run folder is
removed (no folder: nothing a report could mistake for a finished run), and the trial, with the
accuracies it reached and the steps it trained, stays in the study.

Every study lives in ``OUT_DIR/search.journal`` (Optuna's journal file: text, append-only), and every
trial is listed in ``OUT_DIR/trials.csv``. The same command again trains nothing once each setting
has ``--trials`` complete or pruned trials; after a Ctrl-C or a kill it resumes the rate it was
training from that run's checkpoint. The rates asked for are a function of the trials before them
(the sampler is seeded per trial), so an interrupted search resumes into the same rates.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import hashlib
import io
import itertools
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bnstudy.errors import BnstudyError, ConfigError
from bnstudy.train.stops import Interrupted

log = logging.getLogger("bnstudy")

JOURNAL = "search.journal"
TRIALS_CSV = "trials.csv"
PRUNED = "pruned by bnstudy-search"
TRIAL_COLUMNS = ["setting", "trial", "state", "lr", "val_acc", "steps_trained", "stopped_at", "runs", "study"]
_NEEDS = "bnstudy-search needs Optuna: pip install -e '.[search]' (make venv installs it)"


class Pruned(Interrupted):
    """Raised by the pruner hook at an evaluation: the run stops there and its folder is removed."""


@dataclass
class Options:
    """How many trials per setting, and how the sampler and the pruner act (the command's ``--`` options)."""

    trials: int = 8
    digits: int = 2
    prune: bool = True
    warmup: float = 0.2  # the pruner acts from this fraction of a run's steps on
    startup: int = 3  # trials of random rates before the sampler models them and the pruner compares
    sampler_seed: int = 0


@dataclass
class Setting:
    """One combination of the swept keys other than the rate and the seed: one Optuna study."""

    label: str  # "norm=bn"; "all" when nothing else is swept
    overrides: list[str]


@dataclass
class Plan:
    """What a search command asks for: the settings, the seeds of a trial, the rate range, the other overrides."""

    settings: list[Setting]
    seeds: list[int]
    low: float
    high: float
    plain: list[str]  # the overrides every run gets
    composed: dict[str, Any] = field(default_factory=dict)  # setting label -> its config, composed once


# ---------------------------------------------------------------- the command line, as Hydra's basic sweeper reads it


def _compose(overrides: list[str], hydra: bool = False) -> Any:
    from hydra import compose

    return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


def _sweep_values(override: Any) -> list[str] | tuple[float, float]:
    """The values of one parsed override: a list of strings, or (low, high) of an ``interval(...)``."""
    from hydra.core.override_parser.types import IntervalSweep

    v = override.value()
    if isinstance(v, IntervalSweep):
        return (float(v.start), float(v.end))
    if override.is_sweep_override():
        return [str(x) for x in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def plan(overrides: list[str]) -> Plan:
    """Read the settings, seeds and rate range from the experiment's sweep and the command line (Hydra composes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    given = parser.parse_overrides(overrides)
    plain = [o.input_line for o in given if not o.is_sweep_override()]
    cfg = _compose(plain, hydra=True)
    params = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    sweeps: dict[str, Any] = {}
    for k, v in params.items():  # the experiment's sweep first; the command line wins, as in Hydra's basic sweeper
        sweeps[k] = _sweep_values(parser.parse_overrides([f"{k}={v}"])[0])
    for o in given:
        sweeps[o.key_or_group] = _sweep_values(o) if o.is_sweep_override() else None
    sweeps = {k: v for k, v in sweeps.items() if v is not None}
    lr = sweeps.pop("optim.lr", None)
    if lr is None:
        one = next((o.input_line for o in given if o.key_or_group == "optim.lr"), None)
        raise ConfigError(
            (f"{one} is one rate" if one else "no optim.lr range to search")
            + ": give it as optim.lr=interval(LOW,HIGH) or a list of rates (optim.lr=0.01,0.1,1)"
        )
    try:
        rates = [float(x) for x in lr] if isinstance(lr, list) else list(lr)
    except ValueError:
        raise ConfigError(f"optim.lr={','.join(lr)}: the rates to search must be numbers") from None
    low, high = min(rates), max(rates)
    if not 0 < low < high:
        raise ConfigError(f"optim.lr range [{low:g}, {high:g}]: the search needs 0 < LOW < HIGH")
    seed = sweeps.pop("seed", None)
    try:
        seeds = [int(s) for s in seed] if isinstance(seed, list) else [int(cfg.seed)]
    except ValueError:
        raise ConfigError(f"seed={','.join(seed)}: seeds are integers") from None
    for k, v in sweeps.items():
        if isinstance(v, tuple):
            raise ConfigError(f"{k}=interval(...): only optim.lr is searched; give {k} a list of values")
    keys = list(sweeps)
    settings = [
        Setting(",".join(f"{k}={v}" for k, v in zip(keys, combo)) or "all", [f"{k}={v}" for k, v in zip(keys, combo)])
        for combo in itertools.product(*(sweeps[k] for k in keys))
    ]
    plain = [o.input_line for o in given if not o.is_sweep_override() and o.key_or_group not in ("optim.lr", "seed", *keys)]
    return Plan(settings, seeds, low, high, plain)


def run_config(p: Plan, setting: Setting, lr: float, seed: int) -> Any:
    """The composed config (a DictConfig, without Hydra's node) of one run of a trial.

    The setting is composed once; the rate and the seed are plain values set on a copy, as
    ``optim.lr=... seed=...`` on the command line would set them (composing takes a second).
    """
    import copy

    if setting.label not in p.composed:
        p.composed[setting.label] = _compose([*p.plain, *setting.overrides, f"optim.lr={p.low!r}", f"seed={p.seeds[0]}"])
    cfg = copy.deepcopy(p.composed[setting.label])
    cfg.optim.lr, cfg.seed = float(lr), int(seed)
    return cfg


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def run_dir_of(cfg: Any) -> Path:
    """Where ``bnstudy-train`` keeps the run of this config: out_dir / its config-named folder."""
    from bnstudy.config import run_name

    plain = _plain(cfg)
    return Path(plain["out_dir"]) / run_name(plain)


def study_name(p: Plan, setting: Setting) -> str:
    """``norm=bn 1a2b3c4d``: the setting, and a hash of what its runs share (the config without rate and seed)."""
    from bnstudy.config import identity

    ident = {k: v for k, v in identity(_plain(run_config(p, setting, p.low, p.seeds[0]))).items() if k != "optim.lr"}
    return f"{setting.label} {hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- one trial


def round_rate(lr: float, digits: int) -> float:
    """The rate a trial trains: ``lr`` to ``digits`` significant digits (0.31622 -> 0.32)."""
    return float(f"{lr:.{digits}g}")


def score(s: dict[str, Any]) -> float | None:
    """A finished run's final validation accuracy as the report's rate choice reads it (precise statistics first;
    a diverged run without one: 0); None when the run has none."""
    final = s.get("final") or {}
    for k in ("val/precise_acc", "val/acc"):
        v = final.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return 0.0 if s.get("status") == "diverged" else None


def _val_rows(run_dir: Path, upto: int) -> list[tuple[int, float]]:
    """(step, validation accuracy) rows of a run's metrics.csv (folder or pack) up to ``upto``."""
    from bnstudy.archive import run_file_text

    text = run_file_text(run_dir, "metrics.csv") or ""
    rows = {}
    for r in csv.DictReader(io.StringIO(text)):
        if r.get("split") == "val" and r.get("metric") in ("acc", "precise_acc") and int(r["step"]) <= upto:
            if r["metric"] == "precise_acc" or int(r["step"]) not in rows:
                rows[int(r["step"])] = float(r["value"])
    return sorted(rows.items())


def _pruner_hook(trial: Any, offset: int, steps: int, every: int) -> Any:
    """The hook that reports each evaluation's validation accuracy and stops the run when the pruner says so."""
    from bnstudy.train.state import Hook

    def prune(state: Any) -> None:
        v = state.last_eval.get("val/precise_acc", state.last_eval.get("val/acc"))
        if v is None:
            return
        trial.report(float(v) if math.isfinite(v) else 0.0, offset + state.step)
        if state.step < steps and trial.should_prune():
            raise Pruned(f"{PRUNED} at step {state.step} (val acc {v:.4f})", state.step)

    return Hook("prune", every, prune)


def _remove_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()  # only if no other seed lives there


def run_trial(trial: Any, p: Plan, setting: Setting, lr: float, opts: Options) -> float:
    """Train (or find) the runs of one trial, seed after seed; their mean score. Raises optuna's TrialPruned."""
    import optuna

    from bnstudy.cli.job import run_job
    from bnstudy.config import RunConfig
    from bnstudy.runs import DONE, read_summary

    scores, runs = [], []
    trial.set_user_attr("steps_trained", 0)
    for i, seed in enumerate(p.seeds):
        cfg = run_config(p, setting, lr, seed)
        rcfg = RunConfig.from_dict(_plain(cfg))
        steps, every = rcfg.train.steps, rcfg.train.eval_every
        run_dir = run_dir_of(cfg)
        runs.append(f"{run_dir.parent.name}/{run_dir.name}")
        trial.set_user_attr("runs", runs)
        before = read_summary(run_dir) or {}
        start = int(before.get("step", 0)) if before.get("status") in ("interrupted", "running") else 0
        done = before.get("status") in DONE
        for step, v in _val_rows(run_dir, int(before.get("step", 0)) if done else start):
            trial.report(v, i * steps + step)  # a finished or resumed run's curve so far: the pruner compares with it
        hooks = [_pruner_hook(trial, i * steps, steps, every)] if opts.prune and not done else []
        try:
            status = run_job(cfg, extra_hooks=hooks)
        except Pruned as e:
            _remove_run(run_dir)
            trial.set_user_attr("steps_trained", trial.user_attrs["steps_trained"] + e.step - start)
            trial.set_user_attr("stopped_at", i * steps + e.step)
            log.info("pruned %s at step %d: %s", run_dir, e.step, e.reason)
            raise optuna.TrialPruned(e.reason) from None
        if status == "locked":
            raise BnstudyError(f"another process is training {run_dir}; wait for it, or stop it, and run the search again")
        if status == "not started":
            raise Interrupted("the time budget ended", start)
        s = read_summary(run_dir) or {}
        if not done:
            trial.set_user_attr("steps_trained", trial.user_attrs["steps_trained"] + int(s.get("step", 0)) - start)
        v = score(s)
        if v is None:
            raise ConfigError(f"{run_dir} has no validation accuracy: the search chooses on the validation split; set data.val_size>0")
        scores.append(v)
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- a study per setting


@contextlib.contextmanager
def _search_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BnstudyError(f"another bnstudy-search is running on {path.parent}; wait for it to end") from None
        yield


def _storage(out_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(out_dir / JOURNAL)))


def _open_study(storage: Any, name: str, p: Plan, setting: Setting, opts: Options) -> Any:
    import optuna

    wanted = {"setting": setting.label, "low": p.low, "high": p.high, "seeds": p.seeds, "digits": opts.digits}
    if name in optuna.get_all_study_names(storage):  # loaded, not created again: a finished search writes nothing
        study = optuna.load_study(study_name=name, storage=storage)
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    had = {k: study.user_attrs.get(k) for k in wanted}
    if all(v is None for v in had.values()):
        for k, v in wanted.items():
            study.set_user_attr(k, v)
    elif had != wanted:
        diff = ", ".join(f"{k} {had[k]} then, {wanted[k]} now" for k in wanted if had[k] != wanted[k])
        raise ConfigError(f"the search of {setting.label} in this out_dir was started otherwise ({diff}); "
                          "run it as it was started, or give another out_dir")
    return study


def _counted(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _resume_stale(study: Any) -> None:
    """Trials left running by a process that was killed: failed, and their rates asked for again (first)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"resumes": t.number})


def _sampler_and_pruner(study: Any, steps: int, opts: Options) -> None:
    import optuna

    n = len(study.get_trials(deepcopy=False))
    # a sampler seeded by the trial's number: the rates asked for follow from the stored trials alone, so an
    # interrupted search resumes into the rates an uninterrupted one would have tried
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=opts.startup, seed=opts.sampler_seed * 100_003 + n)
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=opts.startup, n_warmup_steps=int(opts.warmup * steps))
        if opts.prune else optuna.pruners.NopPruner()
    )


def search_setting(storage: Any, p: Plan, setting: Setting, opts: Options) -> Any:
    """Run one setting's study until it holds ``opts.trials`` complete or pruned trials; return it."""
    import optuna
    from optuna.trial import TrialState

    from bnstudy.config import RunConfig

    probe = RunConfig.from_dict(_plain(run_config(p, setting, p.low, p.seeds[0])))
    if probe.data.val_size <= 0:
        raise ConfigError("the search chooses rates on the validation split: set data.val_size>0 (e.g. data.val_size=10000)")
    if opts.prune and not probe.train.eval_every:
        raise ConfigError("the pruner reads the validation accuracy of each evaluation: set train.eval_every>0, or give --no-prune")
    study = _open_study(storage, study_name(p, setting), p, setting, opts)
    _resume_stale(study)
    while len(_counted(study)) < opts.trials:
        _sampler_and_pruner(study, probe.train.steps * len(p.seeds), opts)
        trial = study.ask()
        lr = round_rate(trial.suggest_float("lr", p.low, p.high, log=True), opts.digits)
        trial.set_user_attr("lr", lr)
        same = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.user_attrs.get("lr") == lr]
        if same:  # its runs were pruned and removed: never trained again
            trial.set_user_attr("steps_trained", 0)
            trial.set_user_attr("same_as", same[0].number)
            study.tell(trial, state=TrialState.PRUNED)
            log.info("%s trial %d: lr %g was pruned in trial %d", setting.label, trial.number, lr, same[0].number)
            continue
        log.info("%s trial %d: lr %g", setting.label, trial.number, lr)
        try:
            value = run_trial(trial, p, setting, lr, opts)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        except BaseException:
            # a Ctrl-C, a kill of the time budget, an error: the rate is asked for first when the search runs again
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number})
            raise
        study.tell(trial, value)
        log.info("%s trial %d: lr %g, val acc %.4f", setting.label, trial.number, lr, value)
    return study


def trial_rows(storage: Any) -> list[dict[str, Any]]:
    """One row per trial of every study in the journal (the columns of trials.csv)."""
    import optuna

    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            ua = t.user_attrs
            stopped = ua.get("stopped_at", max(t.intermediate_values, default=None))
            rows.append({
                "setting": study.user_attrs.get("setting", summary.study_name), "trial": t.number, "state": t.state.name.lower(),
                "lr": ua.get("lr"), "val_acc": t.value if t.value is not None else (t.intermediate_values.get(stopped) if stopped is not None else None),
                "steps_trained": ua.get("steps_trained", 0), "stopped_at": stopped if t.state.name == "PRUNED" else None,
                "runs": ";".join(ua.get("runs", [])), "study": summary.study_name,
            })  # fmt: skip
    return rows


def write_trials(out_dir: Path, storage: Any) -> Path:
    """``OUT_DIR/trials.csv`` from the journal (val_acc of a pruned trial: its last reported accuracy)."""
    from bnstudy.runs import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, TRIAL_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(trial_rows(storage))
    path = out_dir / TRIALS_CSV
    atomic_write_text(path, buf.getvalue())
    return path


def _log_command(out_dir: Path, argv: list[str]) -> None:
    """The command in out_dir/sweeps.log, where reports find the commands that trained a study."""
    import shlex

    from bnstudy.runs import atomic_write_text
    from bnstudy.sweep_log import SWEEPS_LOG

    path = out_dir / SWEEPS_LOG
    logged = path.read_text().splitlines() if path.exists() else []
    line = " ".join(["bnstudy-search", *(shlex.quote(a) for a in argv)])
    if line not in logged:
        atomic_write_text(path, "".join(x + "\n" for x in [*logged, line]))


def search(overrides: list[str], opts: Options, argv: list[str] | None = None) -> list[Any]:
    """Run the search the overrides describe (see the module's doc); return the studies, one per setting."""
    import optuna
    from hydra import initialize_config_dir

    import bnstudy.cli  # noqa: F401  (the resolvers and the schema the config needs)
    from bnstudy.cli.app import CONF_DIR

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # bnstudy's own lines say what each trial did
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        p = plan(overrides)
        out_dir = Path(_plain(run_config(p, p.settings[0], p.low, p.seeds[0]))["out_dir"])
        studies = []
        with _search_lock(out_dir / JOURNAL):
            storage = _storage(out_dir)
            before = sum(len(_counted(s)) for s in _existing(storage))
            try:
                for setting in p.settings:
                    studies.append(search_setting(storage, p, setting, opts))
            finally:
                write_trials(out_dir, storage)
                if sum(len(_counted(s)) for s in _existing(storage)) > before and argv is not None:
                    _log_command(out_dir, argv)
    return studies


def _existing(storage: Any) -> list[Any]:
    import optuna

    return [optuna.load_study(study_name=s.study_name, storage=storage) for s in optuna.get_all_study_summaries(storage)]


def main(argv: list[str] | None = None) -> None:
    """``bnstudy-search OVERRIDES... [--trials N]``: tune each setting's rate (see the module's doc); exit 130 on Ctrl-C."""
    p = argparse.ArgumentParser(
        prog="bnstudy-search",
        description="Tune each variant's learning rate on the validation split with Optuna (TPE sampler, median pruner). "
        "OVERRIDES are bnstudy-train's; the experiment's sweep of optim.lr gives the range, of seed the seeds of a trial, "
        "of any other key the settings tuned one by one.",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for bnstudy-train (experiment=mnist_tuned seed=0 out_dir=...)")
    p.add_argument("--trials", type=int, default=Options.trials, help="complete or pruned trials per setting (default %(default)s)")
    p.add_argument("--digits", type=int, default=Options.digits, help="significant digits of a trial's rate (default %(default)s)")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="train every trial to the end")
    p.add_argument("--warmup", type=float, default=Options.warmup, help="fraction of a run's steps before the pruner acts (default %(default)s)")
    p.add_argument("--startup", type=int, default=Options.startup, help="random trials before the sampler models and the pruner compares (default %(default)s)")
    p.add_argument("--sampler-seed", type=int, default=Options.sampler_seed, help="seed of the sampler (default %(default)s)")
    p.add_argument("--compare", nargs=2, metavar=("SEARCH", "GRID"), help="no training: the search's chosen rates and training steps against a grid study's, as a table and figures/search_vs_grid.png in SEARCH")
    a = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if a.compare:
        from bnstudy.analysis.search import compare

        try:
            print(compare(Path(a.compare[0]), Path(a.compare[1])))
        except BnstudyError as e:
            p.exit(2, f"error: {e}\n")
        return
    if a.trials < 1 or a.digits < 1 or not 0 <= a.warmup < 1 or a.startup < 0:
        p.exit(2, "error: --trials and --digits must be at least 1, --startup at least 0, --warmup in [0, 1)\n")
    try:
        import optuna  # noqa: F401
    except ImportError:
        p.exit(2, f"error: {_NEEDS}\n")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    opts = Options(a.trials, a.digits, a.prune, a.warmup, a.startup, a.sampler_seed)
    try:
        studies = search(a.overrides, opts, argv)
    except Interrupted as e:
        print(f"interrupted at step {e.step} ({e.reason}); run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted; run the same command to resume", file=sys.stderr)
        sys.exit(130)
    except BnstudyError as e:
        p.exit(2, f"error: {e}\n")
    except Exception as e:
        from bnstudy.cli.hydra_errors import command_line_error

        line = command_line_error(e)
        if line is None:
            raise
        p.exit(2, f"error: {line}\n")
    for st in studies:
        best = chosen(st)
        label = st.user_attrs.get("setting", st.study_name)
        print(f"{label}: lr {best.user_attrs['lr']:g} (val acc {best.value:.4f}, trial {best.number})" if best else f"{label}: no trial completed")


def chosen(study: Any) -> Any:
    """The complete trial with the best value, ties to the smallest rate (the report's rule); None before one completes."""
    done = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    return min(done, key=lambda t: (-t.value, t.user_attrs["lr"])) if done else None
