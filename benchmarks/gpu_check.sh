#!/usr/bin/env bash
# The one-shot device check (issue 22): at most 10 minutes on one H100; everything goes to $OUT
# (a temporary directory when unset). GPU_CHECK_TINY=1 runs it at a tiny size (the CPU test does).
# Needs a Python with torch: .venv's when there, else python3 with the project installed from what
# this checkout brings (pip install --no-deps --no-build-isolation -e ., no network).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import darts_core" 2>/dev/null; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
timeout "${GPU_CHECK_TIMEOUT:-570}" "$PYTHON" benchmarks/gpu_check.py "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
echo "report: $OUT/report.json"
