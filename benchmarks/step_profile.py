"""Where one step of the CPU default fit goes: a profile of a Sparse-DIP step, part by part.

    python benchmarks/step_profile.py                      # brain4 and sample4, 1 thread
    python benchmarks/step_profile.py --cases sample4 --steps 200 --threads 2

Per case (the middle slice at the CLI's default fastMRI random mask, the CPU default settings:
random channels, a quarter kept, the hold-out and the wavelet penalty on) the benchmark builds
the fit exactly as :func:`oes_mri.fit.jobs.setup_fit` does, then times, side by side in one
run, each over ``--steps`` repetitions after a warm-up:

- ``step``: the whole fit step, as :func:`oes_mri.fit.engine.fit` runs it (``fit`` for
  ``--steps`` steps, divided), record and logging included;
- ``generator``: the generator's forward and backward alone (``G(z)``, a sum's gradient);
- ``data term``: the forward operator and its gradient on a fixed image (maps, FFTs, masks);
- ``wavelet``: the hybrid prior's ``||W x||_1`` and its gradient on the same image;
- ``adam``: the optimiser's update of the generator's weights;
- ``rest``: ``step`` minus the parts (autograd glue, the record, Python).

The whole step is also timed on each fast path (fp32, channels_last, bf16 autocast) and per
generator in a batch of two fitted as one vmapped network (what averaging K generators costs).

Then ``torch.profiler`` over the same number of whole steps lists the operators by their own
CPU time. Seconds are wall-clock, medians of three repetitions. Writes
``benchmarks/results/profile/step_profile.md``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import case_files  # noqa: E402
from quality import prepare  # noqa: E402

from oes_mri.atomic import atomic_write_bytes  # noqa: E402
from oes_mri.fit.config import DipConfig  # noqa: E402
from oes_mri.fit.engine import fit, fit_batch  # noqa: E402
from oes_mri.fit.jobs import setup_fit  # noqa: E402
from oes_mri.fit.penalty import wavelet_l1  # noqa: E402
from oes_mri.optim import fit_optimizer  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "profile"


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median over 3 repetitions of the seconds per call of ``fn`` run ``reps`` times (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - t) / reps)
    return statistics.median(runs)


def parts(st, cfg: DipConfig, reps: int) -> dict[str, float]:
    """Seconds per call of each part of one step of the fit ``st``."""
    gen, problem = st.gen, st.problem
    with torch.no_grad():
        image = gen().detach()

    def generator() -> None:
        gen.zero_grad(set_to_none=True)
        out = gen()
        (torch.view_as_real(out) if out.is_complex() else out).square().sum().backward()

    def data_term() -> None:
        x = image.clone().requires_grad_(True)
        value = problem.objective(x) if problem.val_mask is not None else (problem.loss(x), None)
        value[0].backward()

    def wavelet() -> None:
        x = image.clone().requires_grad_(True)
        wavelet_l1(x).backward()

    generator()
    opt, _ = fit_optimizer(gen.parameters(), cfg.lr, reps)

    def adam() -> None:
        opt.step()

    def step() -> None:
        fit(gen, st.loss_fn, reps, cfg.lr, st.fit_mask, log_every=25, schedule=cfg.lr_schedule)

    out = {"generator": timed(generator, reps), "data term": timed(data_term, reps),
           "wavelet": timed(wavelet, reps) if st.penalty > 0 else 0.0, "adam": timed(adam, reps)}
    out["step"] = timed(step, 1) / reps
    out["rest"] = out["step"] - sum(v for k, v in out.items() if k != "step")
    return out


def variants(st, cfg: DipConfig, reps: int) -> dict[str, float]:
    """Seconds per step of the whole step on each fast path (:mod:`oes_mri.fit.fastpath`), and
    per generator of a batch of two generators fitted as one vmapped network (K-averaging's cost)."""
    def whole(**options) -> float:
        gen = copy.deepcopy(st.gen)
        if options.get("channels_last"):
            gen = gen.to(memory_format=torch.channels_last)
        return timed(lambda: fit(gen, st.loss_fn, reps, cfg.lr, st.fit_mask, log_every=25, **options), 1) / reps

    def batch() -> float:
        gens = [copy.deepcopy(st.gen) for _ in range(2)]
        return timed(lambda: fit_batch(gens, [st.loss_fn] * 2, reps, cfg.lr, log_every=25), 1) / reps / 2

    return {"fp32": whole(), "channels_last": whole(channels_last=True), "bf16": whole(amp=True),
            "batch of 2, per generator": batch()}


def top_ops(st, cfg: DipConfig, steps: int, n: int = 15) -> str:
    """``torch.profiler``'s table of the ``n`` operators with the most own CPU time over ``steps`` whole steps."""
    from torch.profiler import ProfilerActivity, profile

    fit(st.gen, st.loss_fn, 5, cfg.lr, st.fit_mask, log_every=25)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(st.gen, st.loss_fn, steps, cfg.lr, st.fit_mask, log_every=25)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="brain4,sample4", type=lambda s: s.split(","))
    p.add_argument("--steps", type=int, default=100, help="repetitions timed per part (default 100)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DipConfig().updated({"pruning.method": "random-channels"}).on_device("cpu")
    lines = ["# One step of the CPU default fit, part by part", "",
             f"CPU: {platform.processor() or platform.machine()}, {args.threads} torch thread(s), "
             f"torch {torch.__version__}; settings: `random-channels`, a quarter of the channels kept, "
             f"hold-out and wavelet penalty on (the CLI's CPU default). Made by `benchmarks/step_profile.py "
             f"--cases {','.join(args.cases)} --steps {args.steps} --threads {args.threads}`; milliseconds a step, "
             "median of 3 repetitions of "
             f"{args.steps} steps.", "",
             "| case | image | step | generator fwd+bwd | data term fwd+bwd | wavelet fwd+bwd | Adam | rest |",
             "|---|---|---|---|---|---|---|---|"]
    speed = ["", "## The whole step by fast path, and in a batch of two", "",
             "ms a step (a batch: per generator); ratio to fp32 eager in brackets (below 1: faster).", "",
             "| case | fp32 | channels_last | bf16 autocast | batch of 2 (vmapped), per generator |",
             "|---|---|---|---|---|"]
    tables = []
    for f in case_files(args.cases):
        case = prepare(f, 4.0, readout="crop")          # as the CLI: readout oversampling removed
        st = setup_fit(case.x, cfg, cfg.seed)
        t = parts(st, cfg, args.steps)
        share = {k: v / t["step"] for k, v in t.items()}
        shape = "x".join(str(s) for s in case.x.kspace.shape)
        lines.append(f"| {case.name} | {shape} | {1e3 * t['step']:.1f} | " + " | ".join(
            f"{1e3 * t[k]:.1f} ({100 * share[k]:.0f} %)" for k in
            ("generator", "data term", "wavelet", "adam", "rest")) + " |")
        print(lines[-1], flush=True)
        v = variants(st, cfg, args.steps)
        speed.append(f"| {case.name} | " + " | ".join(f"{1e3 * s:.1f} ({s / v['fp32']:.2f})" for s in v.values()) + " |")
        print(speed[-1], flush=True)
        tables += ["", f"## {case.name}: operators by own CPU time ({args.steps} whole steps)", "", "```",
                   top_ops(setup_fit(case.x, cfg, cfg.seed), cfg, args.steps), "```"]
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(OUT / "step_profile.md", ("\n".join(lines + speed + tables) + "\n").encode())
    print(f"wrote {OUT / 'step_profile.md'}")


if __name__ == "__main__":
    main()
