#!/usr/bin/env bash
# The GPU measurements in one call (the device machine has PyTorch and no network):
#   scripts/gpu_check.sh            -> checks and a Markdown table on stdout (and $OUT/gpu_check.md when set)
# DEVICE=cpu COMPILE=0 scripts/gpu_check.sh runs the same checks on a CPU (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ -n "${OUT:-}" ]; then
  "$PY" scripts/gpu_check.py | tee "$OUT/gpu_check.md"
else
  "$PY" scripts/gpu_check.py
fi
