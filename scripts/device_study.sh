#!/usr/bin/env bash
# One study on a GPU machine, from a plain copy of the project (code, configs and the kit from
# `make device-kit`): install the kit's wheels if hydra is missing, lay out the compact CIFAR-10-JPEG,
# run the study's sweep with several jobs per GPU inside a wall-clock budget, and pack the runs it
# trained into OUT_DIR as at most 8 files of at most 16 MiB. Then, where results/ is kept:
#
#   scripts/device_study.sh OUT_DIR STUDY [overrides...]
#   python -m bnstudy.transfer import OUT_DIR          # into the study's out_dir (results/STUDY)
#
# Environment (all optional):
#   DEVICE_JOBS      concurrent jobs (default: 8 with a GPU, else 1); torch threads per job = cores // jobs
#   DEVICE_BUDGET_S  wall-clock seconds for the whole script (default 540, for a 10-minute job)
#   DEVICE_PACK_S    seconds of the budget kept for stopping and packing (default 60)
#   DEVICE_KIT       the kit folder (default: device-kit/ in the project)
#   DEVICE_INSTALL   auto (install the wheels when hydra cannot be imported; default), yes or no
#   DEVICE_CKPT_MIB  interrupted runs' checkpoints travel back up to this total (default 60)
#   PYTHON           the interpreter (default python3)
# At the budget's end every running job stops after its current step, checkpointed and recorded as
# interrupted; jobs not yet started are left for the next run of the same command (finished runs are
# skipped). Exit code: 0 every run of the sweep finished; 3 some interrupted or not started (packed,
# resumable); 2 bad input; 1 a failure (the log is in OUT_DIR/sweep.log).
set -uo pipefail

t0=$(date +%s)
say() { echo "[device_study +$(( $(date +%s) - t0 ))s] $*"; }
die() { echo "device_study: $1" >&2; exit "${2:-2}"; }

[ $# -ge 2 ] || die "usage: scripts/device_study.sh OUT_DIR STUDY [overrides...]  (STUDY: a file in experiments/)"
OUT=$1; STUDY=$2; shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$ROOT/experiments/$STUDY.yaml" ] || die "no study '$STUDY': experiments/$STUDY.yaml does not exist"
PY=${PYTHON:-python3}
KIT=${DEVICE_KIT:-$ROOT/device-kit}
BUDGET=${DEVICE_BUDGET_S:-540}
PACK_S=${DEVICE_PACK_S:-60}
for v in "$BUDGET" "$PACK_S" "${DEVICE_CKPT_MIB:-60}"; do
  [[ "$v" =~ ^[0-9]+$ ]] || die "DEVICE_BUDGET_S, DEVICE_PACK_S and DEVICE_CKPT_MIB must be whole numbers (got '$v')"
done
[ "$BUDGET" -gt "$PACK_S" ] || die "DEVICE_BUDGET_S ($BUDGET) must exceed DEVICE_PACK_S ($PACK_S)"
mkdir -p "$OUT" || die "cannot create $OUT"
[ -z "$(ls -A "$OUT")" ] || die "$OUT is not empty: give an empty or new folder for the packed runs"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_study.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
say "study $STUDY from $ROOT; budget ${BUDGET}s, ${PACK_S}s of it for packing; output $OUT"

# 1. hydra, omegaconf and the joblib launcher from the kit's wheels (pure Python; torch is never touched)
have_hydra() { "$PY" -c "import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; }
case "${DEVICE_INSTALL:-auto}" in
  no) ;;
  auto|yes)
    if [ "${DEVICE_INSTALL:-auto}" = yes ] || ! have_hydra; then
      ls "$KIT"/wheels/*.whl >/dev/null 2>&1 || die "no wheels in $KIT/wheels: run 'make device-kit' where pip can download, and copy device-kit/ along"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$KIT"/wheels/*.whl \
        || die "installing the wheels of $KIT/wheels failed (see above)" 1
      export PYTHONPATH="$WORK/site:$PYTHONPATH"
      say "installed $(ls "$KIT"/wheels/*.whl | wc -l) wheel(s) into a private folder"
    fi ;;
  *) die "DEVICE_INSTALL must be auto, yes or no (got '$DEVICE_INSTALL')" ;;
esac
# one interpreter start for every check (a torch import takes seconds): missing modules, then the GPUs
probe=$("$PY" - <<'EOF'
import importlib.util
names = ["torch", "torchvision", "hydra", "omegaconf", "yaml", "joblib", "hydra_plugins.hydra_joblib_launcher", "pandas", "scipy", "matplotlib", "tqdm", "PIL", "numpy"]
missing = []
for n in names:
    try:
        found = importlib.util.find_spec(n) is not None  # found, not imported: imports take seconds
    except ImportError:
        found = False
    if not found:
        missing.append(n)
print(" ".join(missing))
import torch
print(", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
EOF
)
missing=$(sed -n 1p <<< "$probe")
gpus=$(sed -n 2p <<< "$probe")
[ -z "$missing" ] || die "$PY cannot import: $missing (the kit carries hydra, omegaconf, antlr4, the joblib launcher and joblib; the rest must be installed)"

# 2. data: the kit's compact CIFAR-10-JPEG in the prepared data folder, decoded once into its cache
export BNSTUDY_DATA_DIR=${BNSTUDY_DATA_DIR:-$ROOT/data}
compact=$KIT/data/compact/cifar10_jpeg.npz
if [ -f "$compact" ] && [ ! -e "$BNSTUDY_DATA_DIR/compact/cifar10_jpeg.npz" ]; then
  mkdir -p "$BNSTUDY_DATA_DIR/compact" && ln -s "$(cd "$(dirname "$compact")" && pwd)/cifar10_jpeg.npz" "$BNSTUDY_DATA_DIR/compact/cifar10_jpeg.npz"
  say "data: $compact linked into $BNSTUDY_DATA_DIR/compact"
fi
if grep -q cifar10_jpeg "experiments/$STUDY.yaml" || [[ " $* " == *" data=cifar10_jpeg "* ]]; then
  "$PY" -c "from bnstudy.config import DataConfig; from bnstudy.data import load_raw; load_raw(DataConfig(name='cifar10_jpeg', download=False))" \
    || die "cifar10_jpeg cannot be loaded (see above): carry device-kit/data/compact/cifar10_jpeg.npz, or set BNSTUDY_DATA_MIRROR" 1
  say "data: cifar10_jpeg decoded into $BNSTUDY_DATA_DIR/cache (the jobs share it)"
fi

# 3. the sweep, DEVICE_JOBS at a time on the GPUs; each job stops at the deadline, checkpointed
if [ "$gpus" = none ]; then JOBS=${DEVICE_JOBS:-1}; else JOBS=${DEVICE_JOBS:-8}; fi
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "DEVICE_JOBS must be a positive whole number (got '$JOBS')"
RUNS=$("$PY" - "$STUDY" "$@" <<'EOF'
import sys, yaml
out = [a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("out_dir=")]
with open(f"experiments/{sys.argv[1]}.yaml") as f:
    print(out[-1] if out else (yaml.safe_load(f) or {}).get("out_dir", "runs"))
EOF
)
export BNSTUDY_DEADLINE=$(( t0 + BUDGET - PACK_S ))
hard=$(( BNSTUDY_DEADLINE + PACK_S / 2 - $(date +%s) ))
[ "$hard" -ge 5 ] || hard=5  # `timeout 0` would mean no limit; past the deadline the jobs do not start anyway
say "sweep: experiment=$STUDY $*; $JOBS concurrent job(s); GPUs: $gpus; runs in $RUNS; jobs stop in $(( BNSTUDY_DEADLINE - $(date +%s) ))s"
timeout --kill-after=10 "$hard" "$PY" -m bnstudy.train -m "experiment=$STUDY" hydra/launcher=joblib_gpu \
  "hydra.launcher.n_jobs=$JOBS" train.progress=off "$@" > "$WORK/sweep.log" 2>&1 &
sweep=$!
tail -n +1 -f "$WORK/sweep.log" --pid=$sweep | grep --line-buffered -E "completed|diverged|interrupted|failed|not started|rror" &
wait $sweep; rc=$?
wait  # the progress filter ends within a second of the sweep
say "sweep ended with exit code $rc"
if [ "$(stat -c %s "$WORK/sweep.log")" -gt $(( 15 * 1024 * 1024 )) ]; then
  tail -c $(( 15 * 1024 * 1024 )) "$WORK/sweep.log" > "$OUT/sweep.log"   # a returned file stays under 16 MiB
else
  cp "$WORK/sweep.log" "$OUT/sweep.log"
fi

# 4. pack what this job trained
# the copy's own commit where it is a git checkout, else the one the kit was made from (a plain copy has no .git)
commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || { [ -f "$KIT/COMMIT" ] && echo "$(cat "$KIT/COMMIT") (device-kit)"; } || echo unknown)
meta=$("$PY" -c 'import json, sys; print(json.dumps({"study": sys.argv[1], "out_dir": sys.argv[2], "jobs": int(sys.argv[3]), "gpus": sys.argv[4], "commit": sys.argv[5], "sweep_exit": int(sys.argv[6]), "overrides": sys.argv[7:]}))' \
  "$STUDY" "$RUNS" "$JOBS" "$gpus" "$commit" "$rc" "$@")
mkdir -p "$RUNS"
"$PY" -m bnstudy.transfer pack "$RUNS" "$OUT" --since "$t0" --meta "$meta" --checkpoint-mib "${DEVICE_CKPT_MIB:-60}" \
  || die "packing failed (see above); the runs stay in $ROOT/$RUNS" 1
not_started=$(grep -c "not started" "$WORK/sweep.log" || true)
status=$("$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); print(' '.join(r['status'] for r in m['runs']))" "$OUT/manifest.json")
n_int=$(grep -o -w interrupted <<< "$status" | wc -l)
n_fail=$(grep -o -w failed <<< "$status" | wc -l)
say "done in $(( $(date +%s) - t0 ))s: $(wc -w <<< "$status") run(s) packed ($n_int interrupted, $n_fail failed), $not_started job(s) not started; import with: python -m bnstudy.transfer import $OUT"
ls -l "$OUT"
if [ "$rc" -eq 0 ] && [ "$n_fail" -eq 0 ] && [ "$n_int" -eq 0 ] && [ "$not_started" -eq 0 ]; then exit 0; fi
if [ "$n_fail" -eq 0 ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || [ "$rc" -eq 124 ]; }; then exit 3; fi
exit 1
