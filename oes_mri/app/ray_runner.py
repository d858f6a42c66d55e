"""Reconstruct many volumes on a Ray cluster (``python -m oes_mri.recon --ray ...``).

Jobs are Ray tasks: per volume, one task learns the volume's OES mask on its reference slice
(``--mask-per volume``), one task per group of ``batch_slices`` slices reconstructs them
with every method whose slices are independent, and one task runs the chains of the
warm-started methods (:mod:`oes_mri.app.chain`: a chain is sequential; the volumes' chains run
in parallel). The mask goes to that volume's slice tasks through Ray's
object store (the slice tasks depend on it; the other volumes do not wait). Each task asks
for ``task_cpus`` CPUs and ``task_gpus`` GPUs (fractional values pack several small fits on
one GPU). Results come back to the driver, which writes them through the same checkpoints
and atomic final files as the serial path (:mod:`oes_mri.app.pipeline`): a slice's checkpoint is
written once, by the driver, when its result arrives.

Failures: a task whose worker process dies (killed, node lost) is retried by Ray up to
``max_retries`` times; if the driver dies, rerunning the same command resumes from the
checkpoints. Ray is optional (``pip install 'oes-mri[ray]'``); the serial path never imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from oes_mri.data.volumes import list_volumes
from oes_mri.errors import InputError
from oes_mri.app.pipeline import VolumeRun, check_output_names, file_error
from oes_mri.app.volume import RunConfig, VolumeData, Warm
from oes_mri.app.progress import Progress
from oes_mri.app.storage import SliceResult, out_lock, write_metrics
from oes_mri.pruning.weightmask import WeightMask

log = logging.getLogger("oes_mri")

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'oes-mri[ray]'"
FORWARDED_ENV = ("OES_MRI_CACHE", "OES_MRI_NO_CALIBRATION")


@dataclasses.dataclass
class RayOptions:
    """Where and how to run.

    Attributes:
        address: "local" (start a Ray instance on this machine, stopped at the end), "auto"
            (join the running cluster, e.g. after ``ray start --head``) or a cluster address.
        workers: CPUs of a "local" instance (default: all).
        task_cpus, task_gpus: resources each task asks for.
        max_retries: retries of a task whose worker died.
    """

    address: str = "local"
    workers: int | None = None
    task_cpus: float = 1.0
    task_gpus: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        """Options under which no task could ever run are refused here (Ray would wait for
        them forever)."""
        if self.workers is not None and self.workers < 1:
            raise InputError(None, f"--ray-workers {self.workers}: must be >= 1")
        if not (0 < self.task_cpus < float("inf")) or not (0 <= self.task_gpus < float("inf")):
            raise InputError(None, "--ray-task-cpus must be > 0 and --ray-task-gpus >= 0")
        if self.address == "local" and self.workers is not None and self.task_cpus > self.workers:
            raise InputError(None, f"--ray-task-cpus {self.task_cpus:g} exceeds --ray-workers {self.workers}: "
                                   "no task could start")
        if self.address == "local" and self.task_gpus > 0:
            import torch

            if not torch.cuda.is_available():
                raise InputError(None, f"--ray-task-gpus {self.task_gpus:g} with --ray local on a machine without "
                                       "a GPU: no task could start")


CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a Ray cluster address to answer before giving up."""


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A ``host:port`` address (``ray://host:port`` too) answers a TCP connection within
    ``timeout``; ``local`` and ``auto`` are not checked.

    Raises:
        InputError: naming the address, when nothing answers.
    """
    import socket

    if address in ("local", "auto"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as err:
        raise InputError(None, f"--ray {address}: no Ray cluster answers there within {timeout:g} s "
                               f"({type(err).__name__}); start one with 'ray start --head' or use --ray local") from None


def import_ray():
    """Ray, or an :class:`InputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(None, RAY_MISSING) from None
    return ray


def _learn_mask(path: Path, cfg: RunConfig) -> tuple[WeightMask, SliceResult]:
    """Task: the volume's OES mask and its reference slice's result."""
    return VolumeData(path, cfg).learn_mask()


def _reconstruct(path: Path, cfg: RunConfig, todo: dict[str, list[int]],
                 mask: tuple[WeightMask, SliceResult] | WeightMask | None, warm: Warm | None = None) -> list[SliceResult]:
    """Task: reconstruct ``todo`` (method -> slices) of one volume; ``warm``: the stored
    weights its chains continue from (plus the OES reference slice's, from the mask task)."""
    warm = {m: dict(w) for m, w in (warm or {}).items()}
    if isinstance(mask, tuple):
        wm, ref = mask
        if ref.weights is not None:
            warm.setdefault(ref.method, {})[ref.index] = ref.weights
    else:
        wm = mask
    vol = VolumeData(path, cfg)
    return [r for results in vol.reconstruct(todo, wm, warm=warm) for r in results]


_WATCHDOG = """
import os, sys, time, signal
driver = int(sys.argv[1])


def started(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def children():
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    out.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(pid))
            except OSError:
                pass
    return out


seen = {}
while True:
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        break
    kids, todo = children(), [driver]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c != os.getpid() and c not in seen:
                try:
                    seen[c] = started(c)
                except OSError:
                    continue
            if c != os.getpid():
                todo.append(c)
    time.sleep(1)
time.sleep(2)
for pid, when in seen.items():
    try:
        if started(pid) == when:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


def watch_local_instance() -> None:
    """Start a detached watchdog that records every process this one starts (Ray's head: the
    GCS, the raylet, its agents and workers, found as descendants every second) and, once this
    process has ended (even by ``kill -9``), ends those still running (measured: after
    ``kill -9`` of the driver, Ray's dashboard and runtime-env agents stayed, about 170 MB).
    Linux only (``/proc``); elsewhere nothing is started."""
    if not os.path.isdir("/proc"):
        return
    import subprocess

    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _init(ray, opts: RayOptions) -> bool:
    """Connect to (or start) Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    check_reachable(opts.address)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        if opts.address == "local":
            watch_local_instance()
            ray.init(num_cpus=opts.workers, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=opts.address, runtime_env=runtime_env, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise InputError(None, f"--ray {opts.address}: cannot connect to Ray ({str(err).splitlines()[0]})")
    if main_thread and sigterm is not None:   # ray.init replaces the caller's SIGTERM handler (and Ray's C++
        signal.signal(signal.SIGTERM, sigterm)  # one prints a stack dump): the caller's stays in charge
    return True


class _Volume:
    """Driver-side bookkeeping of one volume: its run and its pending task count."""

    def __init__(self, run: VolumeRun) -> None:
        self.run, self.pending = run, 0


def run_ray(cfg: RunConfig, opts: RayOptions, progress: Progress | None = None,
            on_volume: Callable[[VolumeRun, list[dict]], None] | None = None) -> list[dict]:
    """:func:`oes_mri.app.pipeline.run` on Ray: same outputs, same checkpoints, same records."""
    ray = import_ray()
    progress = progress or Progress()
    files = list_volumes(cfg.data)
    check_output_names(files)
    started = _init(ray, opts)
    try:
        with out_lock(cfg.out):
            return _run_locked(ray, cfg, opts, files, progress, on_volume)
    finally:
        if started:
            ray.shutdown()


def _run_locked(ray, cfg: RunConfig, opts: RayOptions, files: list, progress: Progress,
                on_volume: Callable[[VolumeRun, list[dict]], None] | None) -> list[dict]:
    """The volumes' tasks on a connected Ray, ``cfg.out`` locked. A bad file of a folder is
    reported and skipped (its remaining tasks cancelled), as in :func:`oes_mri.app.pipeline.run`."""
    vols, failed = [], []
    for f in files:                                       # settings checked before any task
        try:
            vols.append(_Volume(VolumeRun(f, cfg)))
        except Exception as err:  # noqa: BLE001 - one bad file of a folder must not stop the others
            if f == cfg.data:
                raise
            log.warning("error: %s (skipped)", file_error(f, err))
            failed.append(f.name)
    remote = dict(num_cpus=opts.task_cpus, num_gpus=opts.task_gpus, max_retries=opts.max_retries)
    learn = ray.remote(**remote)(_learn_mask)
    recon = ray.remote(**remote)(_reconstruct)
    pending: dict = {}
    todos = [v.run.todo() for v in vols]
    progress.volume(f"{len(vols)} volume(s) on Ray", sum(sum(map(len, t.values())) for t in todos))
    for v, todo in zip(vols, todos):
        _submit(ray, v, todo, learn, recon, pending)
    records: list[dict] = []
    for v in vols:
        if v.pending == 0:
            records += _finish(v, cfg, on_volume)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        v, kind = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            if len(files) == 1:
                if isinstance(cause, InputError):
                    raise cause from None
                raise
            log.warning("error: %s (skipped)", file_error(v.run.info.path, cause))
            failed.append(v.run.info.path.name)
            for other in [r for r, (w, _) in pending.items() if w is v]:
                ray.cancel(other)
                pending.pop(other)
            continue
        results = [result[1]] if kind == "mask" else result
        if kind == "mask":
            v.run.save_mask(*result)
        for r in results:
            v.run.save(r)
        progress.done(f"{v.run.info.path.name} {kind}", sum(r.seconds for r in results), len(results))
        v.pending -= 1
        if v.pending == 0:
            records += _finish(v, cfg, on_volume)
    progress.volume_done()
    if failed:
        err = InputError(cfg.data, f"{len(failed)} file(s) failed: {', '.join(failed)} (the others were reconstructed)")
        err.records = records
        raise err
    return records


def _submit(ray, v: _Volume, todo: dict[str, list[int]], learn, recon, pending: dict) -> None:
    """Submit a volume's mask task (if needed) and its slice tasks (``todo``: :meth:`VolumeRun.todo`)."""
    run, mm = v.run, v.run.cfg.mask_method
    mask = None
    if run.needs_mask():
        mask = learn.remote(run.info.path, run.cfg)
        pending[mask] = (v, "mask")
        v.pending += 1
        todo[mm] = [i for i in todo[mm] if i != run.reference_slice]
    elif mm is not None and todo.get(mm):
        mask = ray.put(run.weight_mask())
    chained = {m: idx for m, idx in todo.items() if idx and run.chained(m)}
    for batch in run.batches():
        part = {m: [i for i in batch if i in idx] for m, idx in todo.items() if m not in chained}
        part = {m: idx for m, idx in part.items() if idx}
        if part:
            ref = recon.remote(run.info.path, run.cfg, part, mask if mm in part else None)
            pending[ref] = (v, "slices")
            v.pending += 1
    if chained:
        ref = recon.remote(run.info.path, run.cfg, chained, mask if mm in chained else None,
                           run.warm_weights(chained))
        pending[ref] = (v, "chain")
        v.pending += 1


def _finish(v: _Volume, cfg: RunConfig, on_volume) -> list[dict]:
    recs = v.run.finish()
    write_metrics(cfg.out, recs)
    if on_volume is not None:
        on_volume(v.run, recs)
    return recs
