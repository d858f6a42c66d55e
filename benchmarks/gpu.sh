#!/usr/bin/env bash
# GPU measurements (issue 5, "GPU numbers"), as prepared scripts with a time budget. Run from
# the repository root on a CUDA machine with oes-mri's dependencies:
#
#     OUT=benchmarks/results/gpu BRAIN=../shared/data/brain_t1_8coil.h5 bash benchmarks/gpu.sh 1   # or 2, 3
#
# Part 1 (eager fit steps):
# 1. benchmarks/speed.py at fastMRI knee size (15 coils, 640x368), alone on the GPU: dense,
#    sparse, OES and reference OES steps, bf16 autocast, batched B = 2 and 4, scaling, FLOPs.
# 2. Then side by side (sharing the GPU, so their seconds are upper bounds):
#    - a simulated knee-size volume (KNEE_SLICES slices, 15 coils, 640x368 k-space, 320x320
#      crop) reconstructed end to end by `python -m oes_mri.recon --device cuda` with
#      Sparse-DIP, all slices in one batch, 300 fit steps (the CUDA path at knee geometry and
#      the per-slice cost outside the fit: ESPIRiT, data consistency, writing);
#    - benchmarks/quality.py on the shared brain at 4x with the CUDA default of 3000 fit steps:
#      the method table, 9000-step (3x) curves of Sparse-DIP and dense DIP, mask-learning length,
#      output averaging and a density sweep, each part in its own process;
#    - speed.py with --compile (torch.compile's cold start and gain).
# Part 2 (fit steps replayed as CUDA graphs, the CUDA default since part 1):
# 1. the CUDA tests (tests/fit/test_fit.py: graph == eager, pruned weights stay zero);
# 2. speed.py at knee size with CUDA-graph steps and batches, alone on the GPU;
# 3. side by side: the knee-size volume again (CUDA graphs), and on the brain at 4x, 3000 fit
#    steps: the method table and mask_steps=1000 at two more seeds (seed spread), and 9000-step
#    curves of magnitude pruning and of OES with 1000 mask-learning steps.
# Part 3 (the ERK layer split, the default since part 2; ran on an H100 in session 7):
# 1. the CUDA tests again (rewritten after part 2);
# 2. side by side, on the brain at 4x, 3000 fit steps: OES, random and magnitude under the
#    ERK split at seeds 0-2 and OES with 1000 mask-learning steps at the same seeds; 9000-step
#    curves of OES and magnitude under ERK (overfitting: last iterate against peak), of OES at
#    densities 2 % and 1 % (do sparser subnetworks overfit less?), and of OES and dense DIP with
#    the cosine learning-rate schedule (--set lr_schedule=cosine).
# Every part has a time cap inside BUDGET seconds; finished rows are kept when a cap hits.
# Results and logs are written under $OUT; with TAR=file.tar.gz they are also packed into one
# file (without caches, masks and reconstructions). PY names the Python (default python).
# QUICK=1 DEVICE=cpu is a smoke test of the script itself (tiny sizes and step counts).
set -u
OUT=${OUT:-benchmarks/results/gpu}
BRAIN=${BRAIN:-../shared/data/brain_t1_8coil.h5}
BUDGET=${BUDGET:-430}
DEVICE=${DEVICE:-cuda}
KNEE_SLICES=${KNEE_SLICES:-2}
PCAP=${PCAP:-300}  # part 3: cap of each side-by-side run
start=$(date +%s)
cap() {  # seconds for the next part: its own cap or what is left of the budget
    local left=$((BUDGET - ($(date +%s) - start)))
    [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"
}
PY=${PY:-python}
export PYTHONUNBUFFERED=1 OES_MRI_CACHE=$OUT/cache
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then
    SPEED="--shape 64 48 --coils 4 --steps 2 --repeats 1 --batch 2 --no-scaling"
    STEPS=20; LONG=40; MASK=10; RECON="--steps 10 --mask-steps 5"; KNEE_SIZE=32
else
    SPEED="--shape 640 368 --coils 15 --steps 20 --repeats 3 --batch 2 4"
    STEPS=3000; LONG=9000; MASK=1000; RECON="--steps 300"; KNEE_SIZE=320
fi
run() {  # run NAME CAP COMMAND...: log to $OUT/NAME.log, note the exit status
    local name=$1 secs; secs=$(cap "$2"); shift 2
    echo "[$(($(date +%s) - start)) s] $name (cap $secs s): $*"
    timeout -k 10 "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "[$(($(date +%s) - start)) s] $name exit $rc$([ $rc = 124 ] && echo ' (time cap)')"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, sigpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'sigpy cupy', sigpy.config.cupy_enabled)"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

knee_volume() {  # a simulated knee-size volume: KNEE_SLICES slices, 15 coils, 640x368 k-space
    $PY -c "
import numpy as np
from oes_mri.data.sample import sample_image
from oes_mri.data.simulate import write_fastmri_file
img = sample_image($KNEE_SIZE)
vol = np.stack([np.roll(img, 4 * s, axis=0) for s in range($KNEE_SLICES)])
write_fastmri_file('$OUT/knee/knee_sim.h5', vol, num_coils=15, seed=7, scale=3e-4, acquisition='CORPD_FBK')
" || echo "knee simulation failed"
}

Q="$PY benchmarks/quality.py --device $DEVICE --data $BRAIN --accels 4 --steps $STEPS"

part1() {
    # 1. speed alone
    run speed 150 $PY benchmarks/speed.py --device "$DEVICE" $SPEED --amp --out "$OUT/speed"

    # 2. side by side
    knee_volume
    run knee 300 $PY -m oes_mri.recon --data "$OUT/knee" --device "$DEVICE" --methods oes $RECON \
        --batch-slices "$KNEE_SLICES" --out "$OUT/knee_out" &
    run q_table 300 $Q --experiments table --table-methods zf,sense,l1,tv,oes,random,magnitude,dip --lrs 1e-2 3e-3 \
        --out "$OUT/q_table" &
    run q_curve_oes 300 $Q --experiments curves --curve-methods oes --curve-steps $LONG --out "$OUT/q_curve_oes" &
    run q_curve_dip 300 $Q --experiments curves --curve-methods dip --curve-steps $LONG --out "$OUT/q_curve_dip" &
    run q_ablation 300 $Q --experiments ablation --ablations mask_steps=$MASK output=ema mask_steps=$((3 * MASK)) \
        --out "$OUT/q_ablation" &
    run q_density 300 $Q --experiments density --densities 0.02 0.1 --out "$OUT/q_density" &
    run speed_compile 300 $PY benchmarks/speed.py --device "$DEVICE" $SPEED --compile --batch --no-scaling \
        --out "$OUT/speed_compile" &
    wait
}

part2() {
    run tests 90 $PY -m pytest -q -p no:cacheprovider tests/fit/test_fit.py -k cuda
    run speed 150 $PY benchmarks/speed.py --device "$DEVICE" $SPEED --steps 40 --amp --no-scaling --out "$OUT/speed"
    knee_volume
    run knee 220 $PY -m oes_mri.recon --data "$OUT/knee" --device "$DEVICE" --methods oes $RECON \
        --batch-slices "$KNEE_SLICES" --out "$OUT/knee_out" &
    for seed in 1 2; do
        run q_seed$seed 220 $Q --experiments table,ablation --table-methods oes,random,magnitude,dip --lrs 1e-2 \
            --ablations mask_steps=$MASK --set seed=$seed --out "$OUT/q_seed$seed" &
    done
    run q_curve_mag 220 $Q --experiments curves --curve-methods magnitude --curve-steps $LONG --out "$OUT/q_curve_mag" &
    run q_curve_oes1000 220 $Q --experiments curves --curve-methods oes --curve-steps $LONG --set mask_steps=$MASK \
        --out "$OUT/q_curve_oes1000" &
    wait
}

part3() {
    run tests 90 $PY -m pytest -q -p no:cacheprovider tests/fit/test_fit.py -k cuda
    for seed in 0 1 2; do
        run q_erk_seed$seed $PCAP $Q --experiments table,ablation --table-methods oes,random,magnitude \
            --ablations mask_steps=$MASK --set seed=$seed --out "$OUT/q_erk_seed$seed" &
    done
    for m in oes magnitude; do
        run q_erk_curve_$m $PCAP $Q --experiments curves --curve-methods $m --curve-steps $LONG \
            --out "$OUT/q_erk_curve_$m" &
    done
    for d in 0.02 0.01; do
        run q_erk_curve_d$d $PCAP $Q --experiments curves --curve-methods oes --curve-steps $LONG \
            --set density=$d --out "$OUT/q_erk_curve_d$d" &
    done
    for m in oes dip; do
        run q_cos_curve_$m $PCAP $Q --experiments curves --curve-methods $m --curve-steps $LONG \
            --set lr_schedule=cosine --out "$OUT/q_cos_curve_$m" &
    done
    wait
}

case "${1:-}" in
    1) part1 ;;
    2) part2 ;;
    3) part3 ;;
    *) echo "usage: bash benchmarks/gpu.sh 1|2|3"; exit 2 ;;
esac
echo "[$(($(date +%s) - start)) s] done"
if [ -n "${TAR:-}" ]; then
    tar czf "$TAR" --exclude=cache --exclude=masks --exclude='*.h5' -C "$OUT" . && echo "wrote $TAR"
fi
