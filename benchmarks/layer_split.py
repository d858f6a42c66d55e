"""Which share of each layer a 5 % mask keeps: OES and the pruning baselines, global top-k
against a layer budget (``--allocation``), on the main quality case.

    python benchmarks/layer_split.py          # about 2 min on 1 CPU thread

Same case as ``benchmarks/quality.py`` (the shared brain's middle slice at 4x when present,
else the built-in sample), same generator seed and default mask-learning steps. Writes
``layer_split.md``: one row per prunable tensor, one column per mask.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from quality import default_files, prepare

from oes_mri.atomic import atomic_write_bytes
from oes_mri.fit.jobs import DipConfig, setup_fit

ROOT = Path(__file__).resolve().parent
MASKS = ["oes:global", "random:global", "magnitude:global", "oes:erk", "random:erk", "magnitude:erk"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="fastMRI file (default: the quality benchmark's main case)")
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--masks", nargs="+", default=MASKS, help="pruning:allocation pairs (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv[1:])
    torch.set_num_threads(1)
    case = prepare(args.data or default_files()[-1], 4.0)
    x, cols, sizes = case.x, {}, {}
    for spec in args.masks:
        pruning, _, allocation = spec.partition(":")
        cfg = DipConfig().updated({"pruning.method": pruning, "pruning.allocation": allocation or "global",
                                   "pruning.density": args.density})
        st = setup_fit(x, cfg, cfg.seed)
        cols[spec] = st.weight_mask.layer_densities()
        sizes = {n: m.numel() for n, m in st.weight_mask.masks.items()}
        print(f"  {spec}: done", flush=True)
    md = [f"# Kept share per layer of {args.density:g} masks\n",
          f"Command: `{' '.join(['python', 'benchmarks/' + Path(argv[0]).name, *argv[1:]])}`\n",
          (f"Case: {case.name} middle slice at {case.accel:.2f}x; generator seed {DipConfig().seed}, "
           f"{DipConfig().pruning.steps} OES mask-learning steps; percent of each tensor kept.\n"),
          "| tensor | weights | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for n, size in sizes.items():
        short = n.replace("net.body.", "").replace("deeper.", "d.")
        md.append(f"| {short} | {size} | " + " | ".join(f"{100 * c[n]:.1f}" for c in cols.values()) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "layer_split.md", ("\n".join(md) + "\n").encode())
    print(f"wrote {args.out / 'layer_split.md'}")


if __name__ == "__main__":
    main()
