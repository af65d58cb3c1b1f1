#!/usr/bin/env bash
# Stage one on a CUDA machine, in one command (Python 3.12 with torch, transformers, h5py,
# scikit-learn, pandas and typer installed; everything else from wheels in .whl/, see
# benchmarks/README.md). Real clips come from $WAV2GENRE_SHARED/data/gtzan_dev, repeated
# through links up to $TRACKS. Two benchmarks, each against plain transformers in the same run:
#   wav2vec2 random-base                  -> embed_cuda.json
#   whisper-base's architecture (random weights unless WHISPER names real ones), packed and
#   alone windows                         -> embed_cuda_whisper_base.json
#   TRACKS=1000 WORKERS=12 bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
results="${OUT:-benchmarks/results}"
mkdir -p "$results"
common=(--device "${DEVICE:-cuda}" --tracks "${TRACKS:-1000}" --dtypes "${DTYPES:-bfloat16}"
  --batch-size "${BATCH:-64}" --workers "${WORKERS:-12}")
failed=0
python3 benchmarks/embed_throughput.py "${common[@]}" --model random-base \
  --out "$results/embed_cuda.json" || failed=1
python3 benchmarks/embed_throughput.py "${common[@]}" --model "${WHISPER:-random-whisper-base}" \
  --windows packed,alone --out "$results/embed_cuda_whisper_base.json" || failed=1
exit $failed
