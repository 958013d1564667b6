#!/usr/bin/env bash
# A fair gamma*x+beta (issue: weight decay and step size for gamma and beta, Fixup beside SkipInit), JOBS runs at a time,
# each with train.threads=1, fp32 throughout (the CPU rungs it is compared with are fp32; fp32 resumes on any CPU):
#   bash scripts/fair.sh vgg         # (a) VGG-11 at 1/8 width (experiments/vgg_fair.yaml): 3 rates per variant, then 3 seeds
#   bash scripts/fair.sh select      # (b) full-width ResNet-20, each fair setting's rate at 10 epochs on validation (1 seed)
#   bash scripts/fair.sh mid         # (b) 10 epochs, all 50,000 images, 3 seeds at the chosen rates, and the bn control
#   bash scripts/fair.sh slow        # (b) only if the fair affine + SkipInit still trails none + SkipInit at 0.1 by more
#                                    #     than a point at 10 epochs: the same with gamma, beta at a tenth of the rate
#                                    #     (optim.norm_lr_scale=0.1), its own rate choice, then 3 seeds
#   bash scripts/fair.sh gate        # (b') under the same condition (the best fair affine setting so far): affine +
#                                    #     SkipInit with a scalar gate (model.branch_gate=scalar), 10 epochs, 3 seeds
#   bash scripts/fair.sh full        # (c) 30 epochs, 3 seeds: the best affine setting at 10 epochs (by its mean test
#                                    #     accuracy over 3 seeds, among those of mid, slow and gate) and Fixup, each at
#                                    #     its rate chosen at 10 epochs; and the bn control (1 seed)
#   bash scripts/fair.sh trails      # the condition of slow and gate: each fair affine setting against none + SkipInit
#   bash scripts/fair.sh ladder      # the fair ladder beside the committed one, as markdown
#   bash scripts/fair.sh vgg_compare # (a) against vgg_tuned: each variant at its chosen rate, gaps to bn, what no decay changed
# Resumable: every run is one bnstudy-train command, so a finished run is skipped and an interrupted one resumes from
# its checkpoint; run the same line again to continue. To stop, `pkill -TERM -f bnstudy-train`: each run saves a
# checkpoint of its current step and the queue stops. Meant for the background:
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
# (b) setting | rate grid (spanning 4x around the committed choice of its unfair counterpart: affine + SkipInit 0.1);
# Fixup's first grid ran as two: 0.05, 0.1, 0.2 (0.1 diverged at step 124) with 0.025 added while 0.2 still ran, when
# 0.05 led; then 0.2 won, the top of the grid, so it went on up to 0.4
FAIR_SETTINGS=(
  "norm=affine model.zero_init_residual=true optim.norm_decay=false|0.05 0.1 0.2"
  "norm=none model.init=fixup optim.norm_decay=false optim.norm_lr_scale=0.1|0.025 0.05 0.1 0.2 0.4"
)
# (b) only if the fair affine + SkipInit trails none + SkipInit at 0.1 (results/resnet_full/mid_rate_check) by more than
# a point: gamma and beta also at a tenth of the rate (Fixup's treatment of its scalars), with its own rate choice
SLOW="norm=affine model.zero_init_residual=true optim.norm_decay=false optim.norm_lr_scale=0.1|0.05 0.1 0.2"
# (b) the control: bn without decay on gamma and beta, at bn's committed rate 0.2 (no rate choice: it should not matter)
CONTROL="norm=bn optim.norm_decay=false optim.lr=0.2"
# (b') the gate: affine + SkipInit whose branch starts at 0 through one scalar gain, every gamma at 1, at the rate
# chosen for the fair affine + SkipInit (the first of FAIR_SETTINGS)
GATE="model.branch_gate=scalar"

run_queue() {  # one bnstudy-train -m per line of stdin, JOBS at a time; exit 1 if any failed
  # a run stopped by SIGTERM (kill, or pkill -f bnstudy-train) exits 143: the queue stops there (xargs stops at 255)
  xargs -P "$JOBS" -I{} -d '\n' bash -c "$BIN/bnstudy-train -m {} || { rc=\$?; [ \$rc = 143 ] && exit 255; exit \$rc; }"
}

chosen_rate() {  # $1: results folder, $2: overrides; the chosen rate, or one line on stderr and exit 1
  "$BIN/python" - "$1" "$2" <<'PY'
import sys

import pandas as pd

from bnstudy.analysis import choose_rates, load_runs

folder, setting = sys.argv[1], sys.argv[2]
runs = load_runs(folder)
given = {kv.split("=", 1)[0].split(".")[-1]: kv.split("=", 1)[1] for kv in setting.split()}
given = {**{"norm_lr_scale": "1.0", "branch_gate": "norm"}, **given}  # a key the setting leaves out is at its default
for col, value in given.items():
    if col == "lr" or col not in runs.columns:
        continue
    norm = lambda v: "1.0" if col == "norm_lr_scale" and pd.isna(v) else "norm" if col == "branch_gate" and pd.isna(v) else str(float(v)) if col == "norm_lr_scale" else str(v).lower()
    runs = runs[runs[col].map(norm) == (str(float(value)) if col == "norm_lr_scale" else value.lower())]
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

fair_affine() {  # $1: trails | best. Each fair affine setting with 3 finished seeds in fair_mid against none + SkipInit at
  # 0.1 (mid_rate_check); trails: exit 0 if the best of them trails it by more than a point, else exit 1; best: print the
  # best setting (by mean test accuracy over its seeds) as "overrides|lr". Exit 2: no such setting yet
  "$BIN/python" - "$1" <<'PY'
import sys

import pandas as pd

from bnstudy.analysis import load_runs
from bnstudy.analysis.aggregate import welch

what = sys.argv[1]
mid = load_runs("results/resnet_full/fair_mid")
if mid.empty or "norm" not in mid.columns:
    print("fair: results/resnet_full/fair_mid holds no runs yet; run the mid stage first", file=sys.stderr)
    sys.exit(2)
mid = mid[(mid["norm"] == "affine") & mid["status"].isin(["completed", "diverged"])].copy()
mid["norm_lr_scale"] = mid.get("norm_lr_scale", pd.Series(1.0, index=mid.index)).fillna(1.0).astype(float)
mid["branch_gate"] = mid.get("branch_gate", pd.Series("norm", index=mid.index)).fillna("norm")
none = load_runs("results/resnet_full/mid_rate_check")
none = none[none["status"].isin(["completed", "diverged"])]["final_test_acc"].tolist()
groups = [(k, g["final_test_acc"].tolist()) for k, g in mid.groupby(["norm_lr_scale", "branch_gate", "lr"]) if len(g) >= 3]
if not groups or len(none) < 3:
    print("fair: no fair affine setting with 3 finished seeds in results/resnet_full/fair_mid yet; run the mid stage first", file=sys.stderr)
    sys.exit(2)
rows = []
for (scale, gate, lr), accs in groups:
    w = welch(accs, none)
    label = "norm_decay=false" + (f" norm_lr_scale={scale:g}" if scale != 1.0 else "") + (f" branch_gate={gate}" if gate != "norm" else "")
    over = "norm=affine model.zero_init_residual=true optim.norm_decay=false" + (f" optim.norm_lr_scale={scale:g}" if scale != 1.0 else "") + (f" model.branch_gate={gate}" if gate != "norm" else "")
    rows.append((w.diff, label, over, lr, w))
rows.sort(key=lambda r: r[0], reverse=True)
if what == "best":
    print(f"{rows[0][2]}|{rows[0][3]:g}")
    sys.exit(0)
for diff, label, _, lr, w in rows:
    print(f"affine + SkipInit ({label}, lr {lr:g}) - none + SkipInit (0.1): {w.diff:+.3f} [{w.lo:+.3f}, {w.hi:+.3f}]", file=sys.stderr)
sys.exit(0 if rows[0][0] < -0.01 else 1)
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
  local settings=("${FAIR_SETTINGS[@]}") best
  if [ "$1" = gate ] || [ "$1" = full ]; then  # the best fair affine setting at 10 epochs in place of the first
    best=$(fair_affine best) || exit 1
    [ "$1" = gate ] && best="${best%%|*} $GATE|${best#*|}"
    settings=("$best")
    [ "$1" = full ] && settings+=("${FAIR_SETTINGS[1]}")
  fi
  for s in "${settings[@]}"; do
    # gate and full: a setting's rate is the one chosen for it without the gate (its select runs)
    lr=${s#*|}
    [[ "$lr" =~ ^[0-9.]+$ ]] || lr=$(chosen_rate results/resnet_full/fair_select "${s%%|*}") || exit 1
    echo "$RES ${s%%|*} optim.lr=$lr data.val_size=0 seed=$seeds $extra out_dir=$out"
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
  mid | full) cmds=$(rung "$STAGE") && printf '%s\n' "$cmds" | run_queue ;;
  trails | slow | gate)
    rc=0; fair_affine trails || rc=$?
    [ "$rc" -le 1 ] || exit 1
    if [ "$rc" = 1 ]; then
      echo "fair: no fair affine setting trails none + SkipInit at 0.1 by more than a point: slow and gate do not apply"
      exit 0
    fi
    if [ "$STAGE" = trails ]; then
      echo "fair: the best fair affine setting trails none + SkipInit at 0.1 by more than a point: slow and gate apply"
    elif [ "$STAGE" = slow ]; then
      for lr in ${SLOW#*|}; do echo "$RES ${SLOW%%|*} optim.lr=$lr out_dir=results/resnet_full/fair_select"; done | run_queue
      lr=$(chosen_rate results/resnet_full/fair_select "${SLOW%%|*}") || exit 1
      echo "$RES ${SLOW%%|*} optim.lr=$lr data.val_size=0 seed=0,1,2 probe.every=390 out_dir=results/resnet_full/fair_mid" | run_queue
    else
      cmds=$(rung gate) && printf '%s\n' "$cmds" | run_queue
    fi ;;
  ladder)
    rungs=()
    for r in mid fair_mid full fair_full long; do
      [ -d "results/resnet_full/$r" ] && rungs+=("$r=results/resnet_full/$r")
    done
    "$BIN/python" -m bnstudy.analysis.ladder "${rungs[@]}" ;;
  *) echo "usage: bash scripts/fair.sh vgg|vgg_compare|select|mid|trails|slow|gate|full|ladder (JOBS=$JOBS runs at a time)" >&2; exit 2 ;;
esac
