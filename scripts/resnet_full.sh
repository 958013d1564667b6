#!/usr/bin/env bash
# The resnet_full ladder on a CPU (experiments/resnet_full.yaml), JOBS runs at a time, each with train.threads=1:
#   bash scripts/resnet_full.sh select     # 1. each setting's rate at 10 epochs, on validation (one run per rate)
#   bash scripts/resnet_full.sh mid        # 2. 10 epochs, 3 seeds at each setting's chosen rate (15 runs)
#   bash scripts/resnet_full.sh rate_check # beside 2: 10 epochs, 3 seeds at a setting's runner-up rate (RATE_CHECK)
#   bash scripts/resnet_full.sh full       # 3. 30 epochs, 3 seeds at the rates chosen at 10 epochs (9 runs)
#   bash scripts/resnet_full.sh long       # 4. the published budget: 182 epochs (71,000 steps), bn, 1 seed, fp32
#   bash scripts/resnet_full.sh all        # select, mid, rate_check, full in order
#   bash scripts/resnet_full.sh ladder     # the scale ladder as markdown: skipinit (width 8), then each rung with a finished run
# The 30-epoch rung also ran on one GPU (results/resnet_full/gpu, bf16 + channels_last as the experiment sets), one
# scripts/device_study.sh per setting at the rates chosen here, imported with python -m bnstudy.transfer import (README).
# Resumable: every run is one bnstudy-train command, so a finished run is skipped and an interrupted one resumes
# from its checkpoint; run the same line again to continue. mid and full read the chosen rates from the runs of
# select and refuse to start while one of its settings has no finished run or its best rate sits at the grid's edge.
# Meant for the background: nohup bash scripts/resnet_full.sh all > resnet_full.log 2>&1 &
# To stop: pkill -TERM -f bnstudy-train (each run saves a checkpoint of its current step, and the queue stops).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
JOBS=${JOBS:-2}        # runs at a time ...
THREADS=${THREADS:-1}  # ... with this many torch threads each (JOBS=1 THREADS=2 finishes each run sooner)
STAGE=${1:-}
COMMON="experiment=resnet_full train.threads=$THREADS train.progress=off"
# The rate choice trained in bf16 autocast + channels_last (the experiment's setting, on a CPU with native bf16).
# From 2026-12-03 this machine's CPU has no native bf16 (AVX2 only), where train.amp=true is refused, so the mid
# and full rungs train in fp32 + channels_last, which runs on every CPU: a rung is one precision whatever
# machine a session gets. bf16 and fp32 agree at 10 epochs (bn: 0.830 and 0.829, results/resnet_full/precision).
RUNG="train.amp=false"

# setting (overrides) | rate grid; the order is the order they train in
SETTINGS=(
  "norm=bn|0.05 0.1 0.2 0.4"  # 0.2 won among 0.05-0.2, so the grid goes on
  "norm=affine model.zero_init_residual=true|0.025 0.05 0.1 0.2"  # 0.1 won among 0.025-0.1, so the grid goes on
  "norm=none model.zero_init_residual=true|0.025 0.05 0.1 0.2 0.4"  # 0.1 won among 0.025-0.1, then 0.2 among 0.025-0.2, so the grid goes on
  "norm=affine|0.0003125/fp32 0.000625 0.00125 0.0025 0.005 0.01"  # 0.0025 won (0.005 and 0.01 diverge), then 0.000625, so the grid goes down; 0.0003125 ran in fp32 (see RUNG)
  "norm=none|0.000625 0.00125 0.0025 0.005 0.01"  # 0.0025 won (0.005 stays at chance, 0.01 diverges), so the grid goes down
)
# a rate written lr/fp32 trains in fp32 + channels_last (train.amp=false), the rest of select in bf16 + channels_last
# the settings of the full rung (the zero-initialised branches stand for affine and none there)
FULL=(0 1 2)
# the published budget (He et al. 2016: 64k iterations at batch 128 on 45k images; 71,000 steps of 128 = 182 epochs of
# 50,000): the settings and seeds of the long rung, at the rates chosen at 10 epochs; 7-16 h a run on one core, resumed
# across sessions from its checkpoint (fp32, so any CPU resumes it)
LONG=(0)
LONG_SEEDS="0"
# A check beside the mid rung, not a rung: setting | its runner-up rate in select, trained like mid (3 seeds, all
# 50,000 images) into results/resnet_full/mid_rate_check. At its chosen 0.2, none + SkipInit's seed 2 sat at
# chance for 1,400 steps in mid; 0.1 was 0.004 behind 0.2 on validation. Does the rate or the setting fail?
RATE_CHECK=(
  "norm=none model.zero_init_residual=true|0.1"
)

run_queue() {  # one bnstudy-train -m per line of stdin, JOBS at a time; exit 1 if any failed
  # a run stopped by SIGTERM (kill, or pkill -f bnstudy-train) exits 143: the queue stops there (xargs stops at 255)
  xargs -P "$JOBS" -I{} -d '\n' bash -c "$BIN/bnstudy-train -m $COMMON {} || { rc=\$?; [ \$rc = 143 ] && exit 255; exit \$rc; }"
}

select_cmds() {
  for s in "${SETTINGS[@]}"; do
    for lr in ${s#*|}; do
      case "$lr" in */fp32) echo "${s%%|*} optim.lr=${lr%/fp32} train.amp=false" ;; *) echo "${s%%|*} optim.lr=$lr" ;; esac
    done
  done
}

chosen_rate() {  # the chosen rate of one setting, from the select runs; one line on stderr and exit 1 when there is none
  "$BIN/python" - "$1" <<'EOF'
import sys
from bnstudy.analysis import choose_rates, load_runs

overrides = dict(kv.split("=", 1) for kv in sys.argv[1].split())
runs = load_runs("results/resnet_full/select")
runs = runs[runs["norm"] == overrides["norm"]]
zero = overrides.get("model.zero_init_residual", "false") == "true"
runs = runs[runs["zero_init_residual"].fillna(False).astype(bool) == zero]
if runs.empty or not runs["status"].isin(["completed", "diverged"]).all():
    sys.exit(f"resnet_full: the rate choice of '{sys.argv[1]}' is not finished; run: bash scripts/resnet_full.sh select")
if (runs["status"] == "diverged").all():
    print("diverged")  # at every rate of its grid: a finding of the rate choice, nothing to train further
    sys.exit()
choice = choose_rates(runs, by=["norm", "lr"])
lr = float(choice["lr"].iloc[0])
grid = sorted(runs["lr"].unique())
if lr in (grid[0], grid[-1]):
    sys.exit(f"resnet_full: '{sys.argv[1]}' chose lr={lr:g}, the edge of its grid {grid}; add the next rate beyond it to SETTINGS and run select first")
print(f"{lr:g}")
EOF
}

finished() {  # exit 0 when the results folder $1 holds a finished run (a rung still training its first runs is left out)
  [ -d "$1" ] && "$BIN/python" -c "import sys; from bnstudy.analysis.load import load_runs; from bnstudy.runs import DONE; r = load_runs(sys.argv[1]); sys.exit(0 if len(r) and r['status'].isin(DONE).any() else 1)" "$1"
}

rung_cmds() {  # $1: mid | full | long
  local idx=("${!SETTINGS[@]}") extra="" seeds="0 1 2"
  if [ "$1" = full ]; then idx=("${FULL[@]}"); extra="train.steps=11700 train.eval_every=1170"; fi
  if [ "$1" = long ]; then idx=("${LONG[@]}"); extra="train.steps=71000 train.eval_every=3550"; seeds=$LONG_SEEDS; fi
  for i in "${idx[@]}"; do
    local s=${SETTINGS[$i]%%|*} lr
    lr=$(chosen_rate "$s") || exit 1
    if [ "$lr" = diverged ]; then echo "resnet_full: '$s' diverged at every rate of select; not trained in $1" >&2; continue; fi
    for seed in $seeds; do echo "$s optim.lr=$lr data.val_size=0 seed=$seed $RUNG $extra out_dir=results/resnet_full/$1"; done
  done
}

case "$STAGE" in
  select) select_cmds | run_queue ;;
  mid | full | long) cmds=$(rung_cmds "$STAGE") && printf '%s\n' "$cmds" | run_queue ;;
  rate_check)
    for c in "${RATE_CHECK[@]}"; do
      for seed in 0 1 2; do echo "${c%%|*} optim.lr=${c#*|} data.val_size=0 seed=$seed $RUNG out_dir=results/resnet_full/mid_rate_check"; done
    done | run_queue ;;
  all) "$0" select && "$0" mid && "$0" rate_check && "$0" full ;;
  ladder)
    rungs=("width 8, 2.6 epochs=results/skipinit")
    finished "results/resnet_full/mid" && rungs+=("full width, 10 epochs=results/resnet_full/mid")
    finished "results/resnet_full/gpu" && rungs+=("full width, 30 epochs (GPU, bf16)=results/resnet_full/gpu")
    finished "results/resnet_full/full" && rungs+=("full width, 30 epochs (CPU, fp32)=results/resnet_full/full")
    finished "results/resnet_full/long" && rungs+=("full width, 182 epochs (CPU, fp32)=results/resnet_full/long")
    "$BIN/python" -m bnstudy.analysis.ladder "${rungs[@]}" ;;
  *) echo "usage: bash scripts/resnet_full.sh select|mid|rate_check|full|long|all|ladder (JOBS=$JOBS runs at a time)" >&2; exit 2 ;;
esac
