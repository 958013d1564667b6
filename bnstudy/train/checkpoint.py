"""The checkpoint: one file holding everything a run needs to continue bit-for-bit."""
from __future__ import annotations

import os
import random
import warnings
from typing import Any

import torch
from torch import nn

from bnstudy.checks import check_checkpoint_identity, checkpoint_identity, short_reason
from bnstudy.errors import CheckpointError
from bnstudy.train.state import State

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(state: State) -> None:
    """Write model, optimizer, scheduler, step, RNG states, data position and hook state."""
    ckpt = {
        "identity": checkpoint_identity(state.cfg),  # resume refuses a checkpoint of another config or seed
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler else None,
        "batches": state.batches.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
        },
        "losses": [float(v) for v in state.losses],
        "train_seconds": state.train_seconds,
        "hook_seconds": state.hook_seconds,
        "hook_times": dict(state.hook_times),
        "last_train_loss": state.last_train_loss,
        "last_eval": dict(state.last_eval),
        "best_acc": state.best_acc,
        "extra": state.extra,
    }
    path = state.run_dir / CHECKPOINT
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a Python file: a full disk is an OSError (ENOSPC), not a bare RuntimeError
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # frees the space a half-written checkpoint took, for the failure record
        raise


def load_checkpoint(state: State) -> None:
    """Restore a :func:`save_checkpoint` file into ``state``; one that cannot be used is a :class:`CheckpointError`.

    The file is loaded with ``weights_only=True``: tensors, numbers, strings and
    containers of them only, so a checkpoint placed in a shared run folder cannot
    run code.
    """
    path = state.run_dir / CHECKPOINT
    fix = "delete it (or run with force=true) to train this run from the start"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on a foreign pickle protocol: the error below says it all
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - foreign, truncated, corrupt, unreadable: all end the same way
        lines = str(e).strip().splitlines() or [type(e).__name__]
        if lines[0].startswith("Weights only load failed"):
            found = [ln.strip() for ln in lines if "Unsupported" in ln]
            reason = "it holds objects other than tensors and numbers" + (f" ({short_reason(found[0], 120)})" if found else "")
        else:
            reason = f"truncated or corrupt ({short_reason(e)})"
        raise CheckpointError(f"cannot resume from {path}: not a checkpoint bnstudy can load: {reason}; {fix}") from None
    check_checkpoint_identity(ckpt, state.cfg, state.run_dir, path)
    try:
        _restore(state, ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit this run ({type(e).__name__}: {short_reason(e)}); {fix}") from None


def _restore(state: State, ckpt: dict[str, Any]) -> None:
    _raw(state.model).load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scheduler and ckpt["scheduler"]:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    state.batches.load_state_dict(ckpt["batches"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    version, internal, gauss = ckpt["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    state.step = ckpt["step"]
    state.losses = [torch.tensor(v, device=state.device) for v in ckpt["losses"]]
    state.train_seconds = ckpt["train_seconds"]
    state.hook_seconds = ckpt["hook_seconds"]
    state.hook_times = ckpt["hook_times"]
    state.last_train_loss = ckpt["last_train_loss"]
    state.last_eval = ckpt["last_eval"]
    state.best_acc = ckpt["best_acc"]
    state.extra = _to_device(ckpt["extra"], state.device)  # loaded on the CPU (RNG states must stay there)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _raw(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)
