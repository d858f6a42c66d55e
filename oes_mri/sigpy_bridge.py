"""Run a sigpy app where the torch tensors live: on their CUDA device through CuPy when
sigpy can use it there, else on the CPU (NumPy).

sigpy (ESPIRiT, L1-wavelet, TV) takes NumPy arrays on the CPU and CuPy arrays on a GPU.
CuPy is optional (``pip install 'oes-mri[gpu]'``, or ``cupy-cuda12x`` for CUDA 12); without
it the app runs on the CPU, and when CuPy fails on the device (driver, NVRTC) it runs there
after a logged warning.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import numpy as np
import torch

log = logging.getLogger("oes_mri")


def sigpy_device(device: torch.device):
    """The ``sigpy.Device`` of a CUDA ``device`` when sigpy has CuPy, else None (CPU)."""
    if device.type != "cuda":
        return None
    import sigpy

    if not sigpy.config.cupy_enabled:
        return None
    return sigpy.Device(device.index if device.index is not None else torch.cuda.current_device())


def run_app(make_app: Callable[..., object], arrays: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """``make_app(**arrays as NumPy/CuPy, device=sigpy device).run()`` as a complex64 tensor on ``device``.

    Args:
        make_app: builds the sigpy App from keyword arrays and ``device``.
        arrays: tensors handed to the app (moved to the app's device, ``complex64``/``float32`` kept).
        device: where the tensors live and the result goes.

    sigpy's step-size estimate (``MaxEig``) starts from ``np.random``/``cupy.random`` noise of
    the global generator; it is seeded here (and the caller's NumPy state restored), so the
    same input gives the same image.
    """
    with _seeded_global_rng():
        return _run_app(make_app, arrays, device)


@contextlib.contextmanager
def _seeded_global_rng(seed: int = 0) -> Iterator[None]:
    """NumPy's global generator seeded for the block, its previous state restored after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _run_app(make_app: Callable[..., object], arrays: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    gpu = sigpy_device(device)
    if gpu is not None:
        try:
            import cupy

            with cupy.cuda.Device(gpu.id):
                cupy.random.seed(0)
                app = make_app(**{k: cupy.asarray(v.detach().contiguous()) for k, v in arrays.items()}, device=gpu)
                return torch.as_tensor(app.run(), device=device).to(torch.complex64)
        except Exception as err:         # CuPy present but unusable here: the CPU still works
            log.warning("sigpy on %s failed (%s: %s); running it on the CPU", device, type(err).__name__,
                        (str(err).splitlines() or [""])[0][:120])
    import sigpy

    app = make_app(**{k: v.detach().cpu().numpy() for k, v in arrays.items()}, device=sigpy.cpu_device)
    return torch.from_numpy(np.asarray(app.run()).astype(np.complex64)).to(device)
