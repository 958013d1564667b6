"""The standard hooks (train-loss log, evaluation, checkpoint) and the progress display at hook points."""
from __future__ import annotations

import contextlib
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.config import RunConfig
from bnstudy.runs import write_json
from bnstudy.train import precision
from bnstudy.train.checkpoint import save_checkpoint
from bnstudy.train.state import State
from bnstudy.train.stops import Diverged


def log_hook(state: State) -> None:
    """Train loss (mean over the interval) and lr; raises :class:`Diverged` on a bad loss."""
    if not state.losses:
        return
    vals = _losses_or_diverged(state)
    state.losses.clear()
    state.last_train_loss = float(vals.mean())
    state.log.write(state.step, [("train", "loss", state.last_train_loss), ("train", "lr", state.lr())], state.train_seconds)


def check_divergence(state: State) -> None:
    """At a hook point without a log row: raise :class:`Diverged` if a loss since the last log point is bad.

    Run before any other hook of that step, so an evaluation, probe or checkpoint
    never records a step after the divergence: the run's rows end at the step it
    diverged at, in order, as ``bnstudy-runs --check`` expects.
    """
    if state.losses:
        _losses_or_diverged(state)


def _losses_or_diverged(state: State) -> torch.Tensor:
    vals = torch.stack(state.losses).float().cpu()  # the only host sync of the interval
    bad = (~torch.isfinite(vals)) | (vals > state.cfg.train.diverge_loss)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        first = state.step - len(vals) + 1
        state.losses.clear()
        state.last_train_loss = float(vals[i])
        state.log.write(first + i, [("train", "loss", float(vals[i]))], state.train_seconds)
        raise Diverged(first + i, float(vals[i]))
    return vals


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, amp: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i : i + batch_size]).float()
            yb = y[i : i + batch_size]
            loss_sum += F.cross_entropy(out, yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return float(loss_sum) / x.shape[0], int(correct) / x.shape[0]


def eval_splits(state: State) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(split, x, y) of every split a run evaluates on: test, and val when the config holds one out."""
    d = state.data
    return [("test", d.test_x, d.test_y)] + ([("val", d.val_x, d.val_y)] if d.val_x is not None else [])


def use_amp(state: State) -> bool:
    """Whether forward passes run under bf16 autocast (``train.amp``, on any device)."""
    return precision.enabled(state.cfg)


def eval_hook(state: State) -> None:
    """Test (and val) loss and accuracy; tracks the best test accuracy."""
    rows = []
    for split, x, y in eval_splits(state):
        loss, acc = evaluate(state.model, x, y, state.cfg.train.eval_batch_size, use_amp(state))
        rows += [(split, "loss", loss), (split, "acc", acc)]
        state.last_eval[f"{split}/loss"], state.last_eval[f"{split}/acc"] = loss, acc
    acc = state.last_eval["test/acc"]
    if math.isnan(state.best_acc) or acc > state.best_acc:
        state.best_acc = acc
    state.log.write(state.step, rows, state.train_seconds)


def checkpoint_hook(state: State) -> None:
    """Everything needed to continue bit-for-bit, written atomically; the summary shows the progress."""
    if state.step >= state.cfg.train.steps:
        # the run completes right after this hook and writes its summary; a checkpoint
        # here would be deleted at once, and failing to write it (a full disk) would
        # turn a finished run into a failed one
        return
    save_checkpoint(state)
    if state.summarize is not None:
        write_json(state.run_dir / "summary.json", state.summarize("running"))


# ---------------------------------------------------------------- progress display


def progress_bar(cfg: RunConfig, start: int):
    """A tqdm bar when ``train.progress`` asks for one (``auto``: on a terminal), else None."""
    mode = cfg.train.progress
    show = mode == "on" or (mode == "auto" and sys.stderr.isatty())
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc=cfg.norm.name, unit="step", leave=False, dynamic_ncols=True)


def progress_line(state: State) -> str:
    """``step 500/5000  train loss 0.2713  test acc 0.9412  (3.1 s)``; a value not measured yet is left out."""
    parts = [f"step {state.step}/{state.cfg.train.steps}"]
    if not math.isnan(state.last_train_loss):  # nan until the first log point averages the losses
        parts.append(f"train loss {state.last_train_loss:.4f}")
    if "test/acc" in state.last_eval:
        parts.append(f"test acc {state.last_eval['test/acc']:.4f}")
    return "  ".join(parts) + f"  ({state.train_seconds:.1f} s)"
