"""How a fit step runs fastest on this machine: a capability check and a short calibration.

What is fast depends on the CPU: bf16 autocast was 21.8x slower than fp32 on one CPU of this
project's machine kind (no native bf16) and 1.4-1.8x faster on another (AVX512-BF16), with
channels_last 1.3-1.5x faster there (``benchmarks/results/speed.md``), and within 0.9-1.1x of
fp32 on this project's AVX2 CPU. So the fit does not assume: ``auto`` checks for native bf16
arithmetic and, where there is some, times a few steps of fp32 eager, channels_last and bf16
autocast on a copy of the generator, and keeps the fastest when it beats fp32 by
:data:`MARGIN` (else fp32: never slower than fp32 eager, and the same numbers as fp32 unless a
path clearly pays). The choice
and the timings go into the fit's history (``metrics.json``, the report). On CUDA, ``auto`` is
fp32 (``--amp`` and CUDA graphs are the GPU's own switches).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

PATHS = ("fp32", "channels_last", "bf16")
FAST_PATHS = ("auto",) + PATHS
MARGIN = 0.15
"""A path replaces fp32 only when its step takes at most ``1 - MARGIN`` of fp32's."""
STEPS = 3
"""Timed steps per candidate (after one untimed)."""


class FastPath(NamedTuple):
    """The chosen path and the seconds per step measured for each candidate (empty: not calibrated)."""
    path: str
    seconds: dict[str, float]


def native_bf16(device: torch.device) -> bool:
    """The device computes bf16 natively: a CUDA device that supports it, or a CPU with
    AVX512-BF16 or AMX (read from ``/proc/cpuinfo``; other systems: no)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


NO_CALIBRATION = "OES_MRI_NO_CALIBRATION"
"""Set to 1, ``auto`` is fp32 without timing anything: runs that must give the same numbers
on a CPU with native bf16 (tests comparing two runs, a reproduction) cannot then differ by a
timing."""


def candidates(device: torch.device) -> list[str]:
    """The paths worth timing on ``device``: fp32 alone on a CPU without native bf16 (there
    bf16 was 21.8x slower and channels_last within 0.9-1.1x of fp32, measured: nothing to gain,
    and no timing noise to change the numbers from run to run) or with :data:`NO_CALIBRATION`
    set, else also channels_last and bf16."""
    if os.environ.get(NO_CALIBRATION, "") not in ("", "0"):
        return ["fp32"]
    return ["fp32", "channels_last", "bf16"] if native_bf16(device) else ["fp32"]


def prepared(gen: nn.Module, path: str) -> nn.Module:
    """``gen`` in ``path``'s memory format (in place; ``channels_last`` moves parameters and the input)."""
    return gen.to(memory_format=torch.channels_last) if path == "channels_last" else gen


def step_seconds(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], path: str,
                 steps: int = STEPS) -> float:
    """Seconds per forward + backward of a copy of ``gen`` run on ``path``."""
    from oes_mri.fit.engine import generator_forward, split_objective

    g = prepared(copy.deepcopy(gen), path)
    g.train()
    forward = generator_forward(g, amp=path == "bf16")
    t = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = split_objective(loss_fn(forward()))[0]
        loss.backward()
        if i:
            t += time.perf_counter() - t0
    return t / steps


def choose(gen: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], setting: str = "auto",
           timer: Callable[[nn.Module, Callable, str], float] = step_seconds) -> FastPath:
    """The path of a fit: ``setting`` itself unless it is ``auto``; then fp32 on CUDA, else the
    fastest candidate (:func:`candidates`) when it beats fp32 by :data:`MARGIN`.

    Raises:
        ValueError: an unknown ``setting``.
    """
    if setting not in FAST_PATHS:
        raise ValueError(f"fast path {setting!r}: one of {', '.join(FAST_PATHS)}")
    device = next(gen.parameters()).device
    if setting != "auto":
        return FastPath(setting, {})
    if device.type == "cuda":
        return FastPath("fp32", {})
    key = (tuple((n, tuple(p.shape)) for n, p in gen.named_parameters()), tuple(gen.z.shape), str(device),
           torch.get_num_threads(), timer)
    if key not in _CHOSEN:                       # once per generator shape and thread count in a process
        seconds = {p: timer(gen, loss_fn, p) for p in candidates(device)}
        best = min(seconds, key=seconds.get)
        _CHOSEN[key] = FastPath(best if seconds[best] <= (1 - MARGIN) * seconds["fp32"] else "fp32", seconds)
    return _CHOSEN[key]


_CHOSEN: dict[tuple, FastPath] = {}
"""Calibrations made in this process (a volume's slices share one)."""
