#!/usr/bin/env bash
# Fill KIT (default device-kit/) with what scripts/device_study.sh needs on a machine that has torch but
# not hydra, and no internet: pure-Python wheels of hydra-core, omegaconf, antlr4 and the joblib
# launcher (the versions this environment runs), and the compact CIFAR-10-JPEG built from the mirror.
#   scripts/device_kit.sh [KIT]        (make device-kit)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=${1:-$ROOT/device-kit}
PY=${PYTHON:-$ROOT/.venv/bin/python}
cd "$ROOT"
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
rm -rf "$KIT/wheels" && mkdir -p "$KIT/wheels"
pins=()
for pkg in hydra-core omegaconf hydra-joblib-launcher joblib; do pins+=("$pkg==$(ver "$pkg")"); done
"$PY" -m pip download -q --only-binary=:all: --no-deps -d "$KIT/wheels" "${pins[@]}"
# antlr4 4.9.x, which omegaconf 2.3 requires, is published as source only: build its (pure-Python) wheel
"$PY" -m pip wheel -q --no-deps -w "$KIT/wheels" "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
for w in "$KIT"/wheels/*.whl; do
  case "$(basename "$w")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
    *) echo "device_kit: $(basename "$w") is not a pure-Python wheel; it may not install on the GPU machine" >&2; exit 1 ;;
  esac
done
BNSTUDY_DATA_DIR="$KIT/data" "$PY" -m bnstudy.data.compact build
{ git rev-parse HEAD 2>/dev/null || echo unknown; } > "$KIT/COMMIT"
echo "device kit in $KIT: $(du -sh "$KIT" | cut -f1) ($(ls "$KIT/wheels" | wc -l) wheels: $(du -sh "$KIT/wheels" | cut -f1); data: $(du -sh "$KIT/data" | cut -f1))"
