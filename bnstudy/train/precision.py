"""The precision and memory format a run computes in (``train.amp``, ``train.channels_last``), on any device.

``train.amp=true`` runs every forward pass (training, evaluation, precise BN and
the probes) under bf16 autocast, on a CUDA GPU or on the CPU; the weights, the
optimizer state and the loss stay fp32. On a CPU, autocast is worth having only
where the CPU computes bf16 itself (AVX-512 BF16 or AMX, and kernels built for
them): elsewhere torch emulates bf16 in fp32 registers and a step is several
times slower than plain fp32, so :func:`check` refuses ``amp`` there.

``train.channels_last=true`` on a CPU is refused for a ResNet narrower than 8:
its first stride-2 shortcut is a 1x1 convolution over ``model.width`` channels,
and torch's CPU kernel for the weight gradient of a 1x1 stride-2 NHWC
convolution over 2 to 7 input channels crashes the process (seen with torch
2.14.1 on an AVX2 CPU: a segfault at the first backward pass).
"""
from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from bnstudy.config import RunConfig
from bnstudy.errors import ConfigError

BF16 = "bf16 autocast"
FP32 = "fp32"

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which its convolutions still have bf16 instructions
_ONEDNN_BF16 = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1", "AVX10_2", "ALL")


def cpu_bf16() -> str | None:
    """None where this CPU computes bf16 natively with the kernels torch uses now, else why it does not."""
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return "this CPU has neither AVX-512 BF16 nor AMX"
    kernels = torch.backends.cpu.get_cpu_capability()
    if not kernels.startswith("AVX512"):
        return f"torch uses its {kernels} kernels here (ATEN_CPU_CAPABILITY), which emulate bf16"
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if not isa.startswith(_ONEDNN_BF16):
        return f"oneDNN is capped at {isa} (ONEDNN_MAX_CPU_ISA), below its bf16 instructions"
    return None


def check(cfg: RunConfig, device: torch.device) -> None:
    """Refuse ``train.amp`` where bf16 would be emulated (far slower than fp32), and channels_last where a CPU
    kernel would crash, naming why and what to do."""
    if device.type == "cpu" and channels_last(cfg) and cfg.model.name == "resnet" and cfg.model.width < 8:
        raise ConfigError(
            f"train.channels_last=true with a ResNet of model.width={cfg.model.width} crashes torch's CPU kernel "
            "(the 1x1 stride-2 shortcut over fewer than 8 channels); use model.width>=8 or drop train.channels_last=true"
        )
    if not cfg.train.amp:
        return
    if device.type == "cpu":
        why = cpu_bf16()
    elif device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        why = f"{torch.cuda.get_device_name(device)} has no native bf16"
    else:
        why = None
    if why:
        raise ConfigError(
            f"train.amp=true asks for bf16 autocast, but {why}: it would train several times slower than fp32; "
            "drop train.amp=true (fp32) or run on a machine with native bf16"
        )


def enabled(cfg: RunConfig) -> bool:
    """Whether forward passes run under bf16 autocast."""
    return cfg.train.amp


def channels_last(cfg: RunConfig) -> bool:
    """Whether the model and its inputs use the NHWC layout (conv nets only: an MLP has no channels)."""
    return cfg.train.channels_last and cfg.model.name != "mlp"


def autocast(cfg: RunConfig, device: torch.device) -> ContextManager:
    """bf16 autocast on ``device`` when ``train.amp`` asks for it, else a context that does nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled(cfg) else contextlib.nullcontext()


def record(cfg: RunConfig) -> dict[str, str]:
    """What summary.json's provenance records: the precision and memory format the run computed in."""
    return {"precision": BF16 if enabled(cfg) else FP32, "memory_format": "channels_last" if channels_last(cfg) else "contiguous"}
