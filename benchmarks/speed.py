"""Speed benchmark: what one fit step costs, side by side in one run.

    python benchmarks/speed.py                     # CPU, the committed results (about 10 min)
    python benchmarks/speed.py --device cuda --amp --compile
    python benchmarks/speed.py --quick             # smoke run

Measured on the built-in sample (8 coils, 320x184 k-space, fastMRI random 4x mask), full
OES hourglass (3.0M parameters), interleaved repeats, median seconds per step:

- floor: the bare generator forward + backward (no data term, no optimizer);
- dense fit step: :func:`oes_mri.fit.engine.fit` (generator + SenseOp + loss + Adam + best
  iterate), and the same with a 5 % weight mask;
- OES step: :func:`oes_mri.pruning.oes.learn_oes_logits` (functional masks, no copies);
- reference OES step: the published code's way (deep copy of the network every step, relaxed
  masks multiplied into the copy's weights in place);
- the fit step with channels_last weights and input; optional ``torch.compile`` and bf16
  autocast of the fit step; on CUDA, the fit step replayed as a CUDA graph;
- batched fitting: slices per second fitting B slices at once vs one at a time;
- FLOPs per step (``torch.utils.flop_counter``) and achieved FLOP/s;
- scaling with image size and coil count (seconds per dense step, peak memory: CPU RSS of a
  fresh subprocess, CUDA max allocated);
- time to quality, read from ``quality_rows.jsonl`` (``benchmarks/quality.py``).

Writes ``speed.md`` (command at the top) and ``speed.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from oes_mri.atomic import atomic_write_bytes
from oes_mri.nets.generator import ArchConfig, build_generator
from oes_mri.physics.masks import fastmri_mask
from oes_mri.pruning.oes import bernoulli_kl, learn_oes_logits, relaxed_mask
from oes_mri.pruning.weightmask import WeightMask, prunable_names, topk_masks
from oes_mri.fit.engine import fit, fit_batch
from oes_mri.fit.problem import make_problem
from oes_mri.physics.operator import MultiCoilOp

ROOT = Path(__file__).resolve().parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_problem(shape: tuple[int, int], coils: int, device: torch.device, seed: int = 0):
    """A generator and scaled k-space problem of a given size (content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn((coils, *shape), dtype=torch.complex64, generator=g)
    maps = torch.randn((coils, *shape), dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().square().sum(0).sqrt()
    m = fastmri_mask(shape, 4, 0.08, seed=seed)
    gen = build_generator(ArchConfig(), shape, 1, seed, device)
    y = (k * m.mask).to(device)
    with torch.no_grad():
        problem = make_problem(y, MultiCoilOp(m.mask, maps).to(device), gen())
    return gen, problem


def per_step(run: Callable[[int], object], steps: int, device: torch.device) -> float:
    """Seconds per step of ``run(steps)`` (after one warm-up call)."""
    sync(device)
    t = time.perf_counter()
    run(steps)
    sync(device)
    return (time.perf_counter() - t) / steps


def floor_step(gen) -> Callable[[int], None]:
    params = list(gen.parameters())

    def run(n: int) -> None:
        for _ in range(n):
            out = gen()
            loss = torch.view_as_real(out).square().sum()
            grads = torch.autograd.grad(loss, params)
            del grads
    return run


def reference_oes(gen, loss_fn, names: list[str], tau: float = 0.2, lr: float = 1e-2, density: float = 0.05,
                  kl_weight: float = 1e-9) -> Callable[[int], None]:
    """OES as the published code does it: a deep copy of the network per step, the relaxed
    mask multiplied into the copy's (frozen) weights in place, the KL term through autograd."""
    logits = {n: torch.zeros_like(p, requires_grad=True) for n, p in gen.named_parameters() if n in names}
    opt = torch.optim.Adam(logits.values(), lr=lr)

    def run(n: int) -> None:
        for _ in range(n):
            net = copy.deepcopy(gen)
            for name, p in net.named_parameters():
                p.requires_grad_(False)
                if name in logits:
                    p.mul_(relaxed_mask(logits[name], tau, None))
            kl = sum(bernoulli_kl(torch.sigmoid(q), density) for q in logits.values())
            loss = loss_fn(net()) + kl_weight * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    return run


def measure_steps(args, device: torch.device) -> dict:
    gen, problem = synthetic_problem(tuple(args.shape), args.coils, device)
    names = prunable_names(gen, "conv")
    wm = WeightMask(topk_masks({n: torch.rand_like(p) for n, p in gen.named_parameters() if n in names}, 0.05, 0.01))
    gens = {k: copy.deepcopy(gen) for k in ("dense", "sparse", "oes", "ref", "compile", "amp")}
    gens["cl"] = copy.deepcopy(gen).to(memory_format=torch.channels_last)      # weights and input noise
    runs = {
        "floor: generator forward+backward": floor_step(gens["dense"]),
        "dense fit step (ours)": lambda n: fit(gens["dense"], problem.loss, n, log_every=10**9),
        "sparse fit step, 5 % mask (ours)": lambda n: fit(gens["sparse"], problem.loss, n, weight_mask=wm,
                                                           log_every=10**9),
        "OES mask-learning step (ours, functional)": lambda n: learn_oes_logits(gens["oes"], problem.loss, names,
                                                                                 0.05, n),
        "OES step, reference (deep copy per step)": reference_oes(gens["ref"], problem.loss, names),
        "dense fit step, channels_last": lambda n: fit(gens["cl"], problem.loss, n, log_every=10**9),
    }
    if args.compile:
        runs["dense fit step, torch.compile"] = lambda n: fit(gens["compile"], problem.loss, n, log_every=10**9,
                                                              compile=True)
    if args.amp:
        runs["dense fit step, bf16 autocast"] = lambda n: fit(gens["amp"], problem.loss, n, log_every=10**9, amp=True)
    if device.type == "cuda":
        gens.update(graph=copy.deepcopy(gen), sgraph=copy.deepcopy(gen))
        runs["dense fit step, CUDA graph"] = lambda n: fit(gens["graph"], problem.loss, n, log_every=10**9,
                                                           cuda_graph=True)
        runs["sparse fit step, 5 % mask, CUDA graph"] = lambda n: fit(gens["sgraph"], problem.loss, n, weight_mask=wm,
                                                                      log_every=10**9, cuda_graph=True)
    times: dict[str, list[float]] = {k: [] for k in runs}
    compile_seconds = None
    failed = {}
    for name, run in list(runs.items()):                 # warm-up (and compilation)
        t = time.perf_counter()
        try:
            run(2)
        except Exception as err:                         # e.g. torch.compile without a working compiler
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            del runs[name], times[name]
            continue
        if "compile" in name:
            compile_seconds = time.perf_counter() - t
    for _ in range(args.repeats):                        # interleaved repeats
        for name, run in runs.items():
            times[name].append(per_step(run, args.steps, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": med, "spread": {k: (min(v), max(v)) for k, v in times.items()}, "failed": failed,
            "compile_seconds": compile_seconds, "flops": flops_per_step(gens["dense"], problem.loss)}


def flops_per_step(gen, loss_fn) -> float:
    """FLOPs of one generator + data-term forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        loss = loss_fn(gen())
        loss.backward()
    gen.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def knee_estimate(mask_steps: int = 100, cuda_steps: int = 3000, slices: int = 35) -> dict:
    """FLOPs of one fit step at fastMRI knee size (15 coils, 640x368) and what a 35-slice
    volume would take at given achieved FLOP/s: an estimate, not a measurement."""
    gen, problem = synthetic_problem((640, 368), 15, torch.device("cpu"))
    flops = flops_per_step(gen, problem.loss)
    total = flops * (cuda_steps + 1.3 * mask_steps) * slices
    return {"flops_per_step": flops, "steps": cuda_steps, "mask_steps": mask_steps, "slices": slices,
            "minutes_at": {f"{r:g} TFLOP/s": total / (r * 1e12) / 60 for r in (20, 50, 100, 200)}}


def measure_batched(args, device: torch.device) -> dict:
    """Slice-steps per second: B slices one at a time vs fitted together (and, on CUDA, the
    same with the step replayed as a CUDA graph)."""
    out = {}
    graphs = (False, True) if device.type == "cuda" else (False,)
    for B in args.batch:
        pairs = [synthetic_problem(tuple(args.shape), args.coils, device, seed=s) for s in range(B)]
        losses = [p[1].loss for p in pairs]
        runs = {}
        for graph in graphs:
            gens, seq = [copy.deepcopy(p[0]) for p in pairs], [copy.deepcopy(p[0]) for p in pairs]
            tag = ", CUDA graph" if graph else ""
            runs["batched" + tag] = lambda n, gens=gens, graph=graph: fit_batch(
                gens, losses, n, log_every=10**9, cuda_graph=graph)
            runs["one at a time" + tag] = lambda n, seq=seq, graph=graph: [
                fit(g, f, n, log_every=10**9, cuda_graph=graph) for g, f in zip(seq, losses)]
        for run in runs.values():
            run(4)
        times = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, run in runs.items():
                times[k].append(per_step(run, args.steps, device))
        out[B] = {k: B / statistics.median(v) for k, v in times.items()}
    return out


def _scaling_child(shape, coils, device_name, steps, threads, queue) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    gen, problem = synthetic_problem(tuple(shape), coils, device)
    fit(gen, problem.loss, 1, log_every=10**9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    s = per_step(lambda n: fit(gen, problem.loss, n, log_every=10**9), steps, device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    queue.put((s, peak))


def peak_rss() -> int:
    """This process's peak resident set (``VmHWM``, bytes; ``ru_maxrss`` would include the
    parent's peak, which Linux carries across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_scaling(args, device: torch.device) -> list[dict]:
    """Dense fit step cost and peak memory per size and coil count, each in a fresh process."""
    ctx = mp.get_context("spawn")
    rows = []
    for shape, coils in args.scaling:
        q = ctx.Queue()
        p = ctx.Process(target=_scaling_child, args=(shape, coils, str(device), max(2, args.steps // 4),
                                                      torch.get_num_threads(), q))
        p.start()
        s, peak = q.get()
        p.join()
        rows.append({"shape": shape, "coils": coils, "seconds": s, "peak_bytes": peak})
        print(f"  scaling {shape[0]}x{shape[1]} {coils} coils: {s:.3f} s/step, {peak / 2**20:.0f} MiB", flush=True)
    return rows


def time_to_quality(folder: Path) -> list[dict]:
    """Steps and seconds until Sparse-DIP's last iterate reaches 99 % of its final SSIM
    (from the rows ``benchmarks/quality.py`` wrote)."""
    rows = [json.loads(line) for part in sorted(folder.glob("quality_rows*.jsonl"))
            for line in part.read_text().splitlines() if line.strip()]
    out = []
    for r in rows:
        if r["method"] != "oes" or not r.get("curve") or r["experiment"] not in ("table", "curves") \
                or r["variant"] not in ("default",) and not r["variant"].startswith("steps="):
            continue
        curve = r["curve"]
        final = curve[-1][2]
        step = next(c[0] for c in curve if c[2] >= 0.99 * final)
        fit_s = (r["seconds"] - r.get("mask_seconds", 0)) / r["steps"]
        out.append({"data": r["data"], "accel": r["accel"], "steps": r["steps"], "final_ssim": final,
                    "step_99": step, "seconds_99": r.get("mask_seconds", 0) + step * fit_s})
    return out


def volume_estimate(res: dict, args, slices: int = 35, steps: int = 3000, mask_steps: int = 100) -> list[str]:
    """Minutes of Sparse-DIP fitting for a volume from the measured per-step rates (one OES
    mask per volume, then every slice fitted at the fastest measured slice-step rate)."""
    s = res["steps"]["seconds"]
    rates = {f"B={B}, {k}": v for B, r in res["batched"].items() for k, v in r.items()}
    rates["one slice, 5 % mask"] = 1 / s["sparse fit step, 5 % mask (ours)"]
    if "sparse fit step, 5 % mask, CUDA graph" in s:
        rates["one slice, 5 % mask, CUDA graph"] = 1 / s["sparse fit step, 5 % mask, CUDA graph"]
    oes = s["OES mask-learning step (ours, functional)"] * mask_steps
    best = max(rates, key=rates.get)
    minutes = (oes + slices * steps / rates[best]) / 60
    return [f"\nFitting a {slices}-slice volume of this size ({mask_steps} OES steps once, {steps} fit steps per "
            f"slice) at the fastest rate measured here ({best}: {rates[best]:.1f} slice-steps/s): "
            f"**{minutes:.1f} min** (ESPIRiT maps, data consistency and writing not included). Batched rates are "
            "of dense generators; a 5 % mask costs the same per step."]


def report(args, argv, res: dict, device: torch.device) -> str:
    s = res["steps"]["seconds"]
    floor = s["floor: generator forward+backward"]
    dense = s["dense fit step (ours)"]
    oes = s["OES mask-learning step (ours, functional)"]
    ref = s["OES step, reference (deep copy per step)"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    md = [f"# Speed benchmark\n\nCommand: `{' '.join(['python', 'benchmarks/speed.py', *argv[1:]])}`\n",
          f"Machine: {name} ({device.type}), {torch.get_num_threads()} torch thread(s), torch {torch.__version__}. "
          f"Problem: {args.coils} coils, {args.shape[0]}x{args.shape[1]} k-space, fastMRI random 4x, full "
          f"OES hourglass (3.0M parameters). Median of {args.repeats} interleaved repeats of {args.steps} steps.\n",
          "| measurement | s/step | ratio | target |", "|---|---|---|---|"]
    targets = {"dense fit step (ours)": (floor, "floor", "<= 1.15"),
               "OES mask-learning step (ours, functional)": (dense, "dense step", "<= 1.3"),
               "OES step, reference (deep copy per step)": (oes, "our OES step", ">= 2"),
               "sparse fit step, 5 % mask (ours)": (dense, "dense step", ""),
               "dense fit step, torch.compile": (dense, "dense step", "< 1"),
               "dense fit step, channels_last": (dense, "dense step", "< 1"),
               "dense fit step, bf16 autocast": (dense, "dense step", "< 1")}
    for k, v in s.items():
        ref_v, ref_name, tgt = targets.get(k, (None, "", ""))
        ratio = f"{v / ref_v:.2f}x {ref_name}" if ref_v else ""
        md.append(f"| {k} | {v:.4f} | {ratio} | {tgt} |")
    for k, why in res["steps"].get("failed", {}).items():
        md.append(f"\n{k}: failed ({why}).")
    if res["steps"]["compile_seconds"] is not None:
        md.append(f"\ntorch.compile: first two steps (compilation) took {res['steps']['compile_seconds']:.0f} s "
                  "(less when inductor's on-disk cache is warm).")
    fl = res["steps"]["flops"]
    md.append(f"\nFLOPs per fit step (forward + backward, torch.utils.flop_counter): {fl / 1e9:.1f} GFLOP; "
              f"achieved {fl / dense / 1e9:.1f} GFLOP/s at {dense:.3f} s/step.")
    md.append(f"\nReference OES / ours: **{ref / oes:.2f}x**; our OES step / our dense step: **{oes / dense:.2f}x**; "
              f"our dense step / floor: **{dense / floor:.2f}x**.\n")
    if res.get("batched"):
        kinds = list(next(iter(res["batched"].values())))
        md += ["## Batched multi-slice fitting (slice-steps per second)\n",
               "| B | " + " | ".join(kinds) + " | batched / one at a time |", "|---" * (len(kinds) + 2) + "|"]
        for B, r in res["batched"].items():
            md.append(f"| {B} | " + " | ".join(f"{r[k]:.2f}" for k in kinds) +
                      f" | {r['batched'] / r['one at a time']:.2f}x |")
        if device.type == "cuda":
            md += volume_estimate(res, args)
    if res.get("scaling"):
        md += ["\n## Scaling (dense fit step, fresh process each)\n", "| k-space | coils | s/step | peak memory MiB |",
               "|---|---|---|---|"]
        for r in res["scaling"]:
            md.append(f"| {r['shape'][0]}x{r['shape'][1]} | {r['coils']} | {r['seconds']:.3f} | "
                      f"{r['peak_bytes'] / 2**20:.0f} |")
    if res.get("ttq"):
        md += ["\n## Time to quality (Sparse-DIP, from the rows of benchmarks/quality.py)\n",
               "| data | accel | fit steps | final SSIM | steps to 99 % of it | seconds (incl. mask learning) |",
               "|---|---|---|---|---|---|"]
        for r in res["ttq"]:
            md.append(f"| {r['data']} | {r['accel']:.2f} | {r['steps']} | {r['final_ssim']:.3f} | {r['step_99']} | "
                      f"{r['seconds_99']:.0f} |")
    k = res.get("knee")
    if k:
        md += ["\n## GPU estimate for a fastMRI knee volume (an estimate from FLOPs, not a measurement)\n",
               f"One fit step at 15 coils, 640x368 k-space (grid 640x384): {k['flops_per_step'] / 1e9:.0f} GFLOP "
               f"(forward + backward, torch.utils.flop_counter). A {k['slices']}-slice volume with "
               f"{k['mask_steps']} mask steps (1.3x a fit step) + {k['steps']} fit steps per slice:\n",
               "| achieved throughput | minutes per volume |", "|---|---|"]
        md += [f"| {r} | {m:.1f} |" for r, m in k["minutes_at"].items()]
        md.append("\nAn H100 peaks at about 67 TFLOP/s in fp32, 495 in TF32 and 990 in bf16 (dense); "
                  "convolutions this size reach a fraction of that."
                  + (" The measured GPU numbers are in `gpu.md`." if device.type == "cuda" else
                     " Not measured on this machine (no GPU)."))
    return "\n".join(md) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", type=int, nargs=2, default=[320, 184])
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="steps per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batch", type=int, nargs="*", default=[4], help="batch sizes for batched fitting")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--amp", action="store_true", help="also time bf16 autocast")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    args.scaling = [((128, 128), 8), ((320, 184), 4), ((320, 184), 8), ((320, 184), 15), ((640, 368), 15)]
    if args.quick:
        args.shape, args.steps, args.repeats, args.batch = [64, 48], 2, 1, [2]
        args.scaling = [((64, 48), 4)]
        args.out = args.out / "quick"
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    args = parse(argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    res = {"steps": measure_steps(args, device)}
    for k, v in res["steps"]["seconds"].items():
        print(f"  {k}: {v:.4f} s/step", flush=True)
    res["batched"] = measure_batched(args, device) if args.batch else {}
    res["scaling"] = [] if args.no_scaling else measure_scaling(args, device)
    res["ttq"] = time_to_quality(ROOT / "results")
    res["knee"] = knee_estimate()
    args.out.mkdir(parents=True, exist_ok=True)
    md = report(args, argv, res, device)
    atomic_write_bytes(args.out / "speed.md", md.encode())
    atomic_write_bytes(args.out / "speed.json", json.dumps(res, indent=1, default=str).encode())
    print(md)


if __name__ == "__main__":
    main()
