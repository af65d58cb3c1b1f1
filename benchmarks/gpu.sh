#!/usr/bin/env bash
# Stage one on a CUDA machine, in one command (Python 3.12 with torch, transformers, h5py,
# scikit-learn, pandas and typer installed; everything else from wheels in .whl/, see
# benchmarks/README.md). Real clips come from $WAV2GENRE_SHARED/data/gtzan_dev.
#   TRACKS=1000 WORKERS=12 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
results="${OUT:-benchmarks/results}"
mkdir -p "$results"
python3 benchmarks/embed_throughput.py --device cuda --tracks "${TRACKS:-1000}" --dtypes bfloat16,float32 \
  --batch-size "${BATCH:-64}" --workers "${WORKERS:-12}" --out "$results/embed_cuda.json"
