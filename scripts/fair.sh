#!/usr/bin/env bash
# A fair gamma*x+beta (issue: weight decay and step size for gamma and beta, Fixup beside SkipInit), JOBS runs at a time,
# each with train.threads=1, fp32 throughout (the CPU rungs it is compared with are fp32; fp32 resumes on any CPU):
#   bash scripts/fair.sh vgg         # (a) VGG-11 at 1/8 width (experiments/vgg_fair.yaml): 3 rates per variant, then 3 seeds
#   bash scripts/fair.sh select      # (b) full-width ResNet-20, each fair setting's rate at 10 epochs on validation (1 seed)
#   bash scripts/fair.sh mid         # (b) 10 epochs, all 50,000 images, 3 seeds at the chosen rates, and the bn control
#   bash scripts/fair.sh gate        # (b') affine + SkipInit with a scalar gate (model.branch_gate=scalar), 10 epochs, 3 seeds
#   bash scripts/fair.sh full        # (c) 30 epochs, 3 seeds at the rates chosen at 10 epochs, and the bn control (1 seed)
#   bash scripts/fair.sh ladder      # the fair ladder beside the committed one, as markdown
#   bash scripts/fair.sh vgg_compare # (a) against vgg_tuned: each variant at its chosen rate, gaps to bn, what no decay changed
# Resumable: every run is one bnstudy-train command, so a finished run is skipped and an interrupted one resumes from
# its checkpoint; run the same line again to continue. Meant for the background:
#   nohup bash scripts/fair.sh select > fair.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
STAGE=${1:-}
RES="experiment=resnet_full train.threads=$THREADS train.progress=off train.amp=false"
VGG="experiment=vgg_fair train.threads=$THREADS train.progress=off"

# (a) variant | 3 rates around its vgg_tuned choice (bn 0.05, affine 0.02, none 0.01); a choice at the grid's edge
# got the next rate beyond it: affine chose 0.01 (so 0.005 was added), none 0.02 (so 0.05)
VGG_SETTINGS=(
  "norm=bn|0.02 0.05 0.1"
  "norm=affine|0.005 0.01 0.02 0.05"
  "norm=none|0.005 0.01 0.02 0.05"
)
# (b) setting | rate grid (spanning 4x around the committed choice of its unfair counterpart: affine + SkipInit 0.1)
FAIR_SETTINGS=(
  "norm=affine model.zero_init_residual=true optim.norm_decay=false|0.05 0.1 0.2"
  "norm=none model.init=fixup optim.norm_decay=false optim.norm_lr_scale=0.1|0.05 0.1 0.2"
)
# (b) the control: bn without decay on gamma and beta, at bn's committed rate 0.2 (no rate choice: it should not matter)
CONTROL="norm=bn optim.norm_decay=false optim.lr=0.2"
# (b') the gate: affine + SkipInit whose branch starts at 0 through one scalar gain, every gamma at 1, at the rate
# chosen for the fair affine + SkipInit (the first of FAIR_SETTINGS)
GATE="model.branch_gate=scalar"

run_queue() {  # one bnstudy-train -m per line of stdin, JOBS at a time; exit 1 if any failed
  xargs -P "$JOBS" -I{} -d '\n' bash -c "$BIN/bnstudy-train -m {}"
}

chosen_rate() {  # $1: results folder, $2: overrides; the chosen rate, or one line on stderr and exit 1
  "$BIN/python" - "$1" "$2" <<'PY'
import sys
from bnstudy.analysis import choose_rates, load_runs

folder, setting = sys.argv[1], sys.argv[2]
runs = load_runs(folder)
for kv in setting.split():
    key, value = kv.split("=", 1)
    col = key.split(".")[-1]
    if key == "optim.lr" or col not in runs.columns:
        continue
    runs = runs[runs[col].map(lambda v: str(v).lower()) == value.lower()]
if runs.empty or not runs["status"].isin(["completed", "diverged"]).all():
    sys.exit(f"fair: the rate choice of '{setting}' in {folder} is not finished; run its select stage first")
choice = choose_rates(runs, by=["norm", "lr"])
lr = float(choice["lr"].iloc[0])
grid = sorted(runs["lr"].unique())
if lr in (grid[0], grid[-1]) and len(grid) > 1:
    sys.exit(f"fair: '{setting}' chose lr={lr:g}, the edge of its grid {grid}; add the next rate beyond it and run the choice again")
print(f"{lr:g}")
PY
}

vgg() {
  for s in "${VGG_SETTINGS[@]}"; do for lr in ${s#*|}; do echo "$VGG ${s%%|*} optim.lr=$lr seed=0"; done; done | run_queue
  for s in "${VGG_SETTINGS[@]}"; do
    lr=$(chosen_rate results/vgg_fair "${s%%|*}") || exit 1
    echo "$VGG ${s%%|*} optim.lr=$lr seed=1,2"
  done | run_queue
}

rung() {  # $1: mid | full | gate
  # probes every evaluation: each layer's gamma (mean and spread over channels) and each scalar gate (block{b}/gain)
  local extra="probe.every=390" out="results/resnet_full/fair_$1" seeds="0,1,2"
  [ "$1" = full ] && extra="train.steps=11700 train.eval_every=1170 probe.every=1170"
  [ "$1" = gate ] && out="results/resnet_full/fair_mid"
  local settings=("${FAIR_SETTINGS[@]}")
  [ "$1" = gate ] && settings=("${FAIR_SETTINGS[0]}")
  for s in "${settings[@]}"; do
    lr=$(chosen_rate results/resnet_full/fair_select "${s%%|*}") || exit 1
    local more=""
    [ "$1" = gate ] && more="$GATE"
    echo "$RES ${s%%|*} $more optim.lr=$lr data.val_size=0 seed=$seeds $extra out_dir=$out"
  done
  [ "$1" = gate ] && return
  [ "$1" = full ] && seeds=0  # the control: 1 seed at 30 epochs
  echo "$RES $CONTROL data.val_size=0 seed=$seeds $extra out_dir=$out"
}

vgg_compare() {
  "$BIN/python" - <<'PY'
from bnstudy.analysis import choose_rates, load_runs
from bnstudy.analysis.aggregate import difference_of_differences, mean_ci, welch
from bnstudy.analysis.ladder import final_test_accuracy

def chosen(folder, choice_seeds):
    runs = load_runs(folder)
    runs = runs[runs["norm"].isin(["bn", "affine", "none"]) & runs["status"].isin(["completed", "diverged"])]
    pick = runs[runs["seed"].isin(choice_seeds)] if choice_seeds else runs
    rates = choose_rates(pick, by=["norm", "lr"]).set_index("norm")["lr"]
    out = {}
    for norm, lr in rates.items():
        g = runs[(runs["norm"] == norm) & (runs["lr"] == lr)]
        out[norm] = (lr, list(final_test_accuracy(g)))
    return out

studies = {"decayed (vgg_tuned)": chosen("results/vgg_tuned", None), "norm_decay=false (vgg_fair)": chosen("results/vgg_fair", [0])}
print("| treatment | variant | lr | seeds | test acc (bn: precise) | - bn [95% Welch] |\n| --- | --- | --- | --- | --- | --- |")
for name, s in studies.items():
    bn = s["bn"][1]
    for norm, (lr, accs) in s.items():
        m, lo, hi, n = mean_ci(accs)
        w = welch(accs, bn)
        gap = "" if norm == "bn" else f"{w.diff:+.3f} [{w.lo:+.3f}, {w.hi:+.3f}]"
        print(f"| {name} | `{norm}` | {lr:g} | {n} | {m:.3f} ± {hi - m:.3f} | {gap} |")
(d_name, d), (f_name, f) = studies.items()
print("\nwhat taking weight decay off gamma and beta changed (fair - decayed) [95% Welch-Satterthwaite]:")
w = welch(f["bn"][1], d["bn"][1])
print(f"  bn itself: {w.diff:+.3f} [{w.lo:+.3f}, {w.hi:+.3f}], p = {w.p:.3f}")
for norm in ("affine", "none"):
    x = difference_of_differences(f[norm][1], f["bn"][1], d[norm][1], d["bn"][1])
    print(f"  gap {norm} - bn: {x.diff:+.3f} [{x.lo:+.3f}, {x.hi:+.3f}], p = {x.p:.3f}")
PY
}

case "$STAGE" in
  vgg) vgg ;;
  vgg_compare) vgg_compare ;;
  select)
    for s in "${FAIR_SETTINGS[@]}"; do
      for lr in ${s#*|}; do echo "$RES ${s%%|*} optim.lr=$lr out_dir=results/resnet_full/fair_select"; done
    done | run_queue ;;
  mid | full | gate) cmds=$(rung "$STAGE") && printf '%s\n' "$cmds" | run_queue ;;
  ladder)
    rungs=()
    for r in mid fair_mid full fair_full long; do
      [ -d "results/resnet_full/$r" ] && rungs+=("$r=results/resnet_full/$r")
    done
    "$BIN/python" -m bnstudy.analysis.ladder "${rungs[@]}" ;;
  *) echo "usage: bash scripts/fair.sh vgg|vgg_compare|select|mid|gate|full|ladder (JOBS=$JOBS runs at a time)" >&2; exit 2 ;;
esac
