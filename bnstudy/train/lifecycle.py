"""The run folder's lifecycle around the loop: resume or start, the summary, and the status each ending leaves.

- completed / diverged: the summary says so; the checkpoint is deleted (finished runs keep results).
- interrupted between two steps (:class:`Interrupted`): a checkpoint of exactly that step; the same
  command resumes bit-for-bit.
- Ctrl-C inside a step: the last checkpoint stays the point the run resumes from.
- any other exception: ``status: failed``, the reason in the summary, the traceback in error.txt.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

from bnstudy import threads
from bnstudy.config import factors
from bnstudy.errors import no_space
from bnstudy.plugins import of_run
from bnstudy.provenance import MACHINE_KEYS, provenance, segments
from bnstudy.runs import MetricsLog, atomic_write_text, checksums, read_summary, write_json
from bnstudy.train import precision
from bnstudy.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from bnstudy.train.hooks import eval_hook
from bnstudy.train.precise_bn import precise_bn_hook
from bnstudy.train.state import State
from bnstudy.train.stops import Diverged, Interrupted

log = logging.getLogger("bnstudy")


def summary(state: State, status: str, params: int, started: float, **more: Any) -> dict[str, Any]:
    """The summary.json content for the run as it stands."""
    steps_done = max(state.step, 1)
    return {
        "status": status,
        "step": state.step,
        "final": {
            "test/acc": state.last_eval.get("test/acc"),
            "test/loss": state.last_eval.get("test/loss"),
            "train/loss": state.last_train_loss,
            **{k: state.last_eval[k] for k in ("val/acc", "test/precise_acc", "val/precise_acc") if k in state.last_eval},
        },
        "best": {"test/acc": None if math.isnan(state.best_acc) else state.best_acc},
        "params": params,
        "seconds": round(state.train_seconds, 4),
        "hook_seconds": round(state.hook_seconds, 4),  # evaluation, logging, probes, checkpoints
        "hook_times": {k: round(v, 4) for k, v in state.hook_times.items()},
        "ms_per_step": round(1000 * state.train_seconds / steps_done, 5),
        "factors": factors(state.cfg),
        "run": f"{state.run_dir.parent.name}/{state.run_dir.name}",
        "device": str(state.device),
        # code and machine: what `bnstudy-runs --stale` compares; and the precision and memory format computed in
        "provenance": {**provenance(state.device, threads.why(), of_run(state.cfg)), **precision.record(state.cfg)},
        "updated": time.time(),
        "started": started,
        **more,
    }


class RunFolder:
    """``with RunFolder(state, params, sweep_id) as run:`` opens the run folder (resuming from its checkpoint)
    and, when the block ends, leaves the status that ending calls for; ``run.result`` is the final summary."""

    def __init__(self, state: State, params: int, sweep_id: str | None = None):
        self.state, self.params = state, params
        self.ids = {"sweep_id": sweep_id} if sweep_id else {}
        self.started = time.time()
        self.segments: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}

    def summary(self, status: str, **more: Any) -> dict[str, Any]:
        """summary.json content with this run's parameter count, start time, sweep id and the machines that trained it."""
        s = summary(self.state, status, self.params, self.started, **more, **self.ids)
        s["provenance"]["segments"] = self.segments
        return s

    def __enter__(self) -> RunFolder:
        state, cfg, run_dir = self.state, self.state.cfg, self.state.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob(".hydra/.*.tmp")]:
            tmp.unlink(missing_ok=True)  # left by a write that failed (a full disk) or a killed process
        ckpt_path = run_dir / CHECKPOINT
        resume = ckpt_path.exists() and not cfg.force
        if not resume:
            ckpt_path.unlink(missing_ok=True)
            (run_dir / "error.txt").unlink(missing_ok=True)
        if resume:
            load_checkpoint(state)  # before any file is written: a checkpoint that cannot be used changes nothing
            log.info("resumed %s from step %d", run_dir, state.step)
        from omegaconf import OmegaConf  # local: the loop itself never needs Hydra

        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())))
        state.log = MetricsLog(
            run_dir / "metrics.csv",
            resume_step=state.step if resume else None,
            tensorboard_dir=run_dir / "tb" if cfg.logger.tensorboard else None,
        )
        prev = read_summary(run_dir) if resume else None
        self.started = prev.get("started", time.time()) if prev else time.time()
        self.segments = segments(prev, state.step, provenance(state.device, threads.why(), of_run(state.cfg)))
        if len(self.segments) > 1 and self.segments[-1]["from_step"] == state.step:
            then, now = self.segments[-2], self.segments[-1]
            diff = ", ".join(f"{k} {then[k]} then, {now[k]} now" for k in MACHINE_KEYS if then.get(k) != now[k])
            log.warning("resumed on another kind of machine (%s): steps from %d on round differently, so the run "
                        "is bit-identical to a re-run only segment by segment (provenance.segments)", diff, state.step)
        state.summarize = self.summary
        write_json(run_dir / "summary.json", self.summary("running"))
        return self

    def __exit__(self, exc_type: type | None, e: BaseException | None, tb: Any) -> bool:
        state, run_dir = self.state, self.state.run_dir
        more: dict[str, Any] = {}
        if isinstance(e, Diverged):
            more = {"diverged_at": e.step}
            state.step = e.step
            eval_hook_safe(state)
        elif isinstance(e, Interrupted):
            # stopped between two steps: a checkpoint of exactly this step loses no work, and the
            # same command (or the cluster's requeue) resumes bit-for-bit
            save_checkpoint(state)
            state.log.close()
            write_json(run_dir / "summary.json", self.summary("interrupted", reason=e.reason))
            return False
        elif isinstance(e, KeyboardInterrupt):
            # a Ctrl-C inside a step (no stop request installed, or pressed twice): the step may be
            # half done, so the last checkpoint stays the point the same command resumes from
            with contextlib.suppress(OSError):
                state.log.close()
            with contextlib.suppress(OSError):
                write_json(run_dir / "summary.json", self.summary("interrupted", reason="Ctrl-C"))
            raise Interrupted("Ctrl-C", state.step) from None
        elif isinstance(e, Exception):
            record_failure(state, e, self.summary("failed", error="error.txt", reason=failure_reason(e, run_dir)))
            return False
        elif e is not None:
            return False  # another BaseException (SystemExit): not ours to record
        state.log.close()
        self.result = self.summary("diverged" if more else "completed", **more)
        self.result["checksums"] = checksums(run_dir)  # --check finds an edited metrics.csv or config.yaml
        write_json(run_dir / "summary.json", self.result)
        (run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished runs keep results, not training state
        return True


def eval_hook_safe(state: State) -> None:
    """Evaluate a diverged model for the record (with precise BN when configured); non-finite outputs are fine here."""
    try:
        eval_hook(state)
        if state.cfg.train.precise_bn > 0:
            precise_bn_hook(state)
    except Exception:  # noqa: BLE001 - a broken model must not hide the divergence result
        pass


def failure_reason(e: BaseException, run_dir: Path) -> str:
    """One line on why a run failed, for its summary."""
    if no_space(e):
        return f"no space left on the device holding {run_dir}"
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}".rstrip(": ")


def record_failure(state: State, e: BaseException, failed: dict[str, Any]) -> None:
    """Leave ``status: failed`` with the reason and the traceback in error.txt, as far as the disk allows."""
    with contextlib.suppress(OSError):
        state.log.close()
    with contextlib.suppress(OSError):  # the summary first: it is small, and it is what sweeps and reports read
        write_json(state.run_dir / "summary.json", failed)
    with contextlib.suppress(OSError):
        atomic_write_text(state.run_dir / "error.txt", "".join(traceback.format_exception(e)))

