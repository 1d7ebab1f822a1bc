#!/usr/bin/env bash
# The one prepared GPU check (README, "Devices and precisions"): the tests marked `gpu`, then plain encode_image vs
# the decomposition vs the whole `decompose` command, for ViT-B-16 and ViT-L-14 (random init), batch 256, fp32 and
# bf16, over 5,000 generated 224-px JPEGs, printing images/s and ratios. Sized to finish in under 8 minutes on one
# GPU (each configuration is one process of about a minute).
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # where PyPI is reachable: the packages a bare CUDA image with
#                                                 # PyTorch tends to lack (open_clip, ftfy, wcwidth, duckdb) -> .whl/
#   bash benchmarks/gpu_check.sh                  # on the GPU machine; installs .whl/ into a temporary folder
#                                                 # when open_clip is not importable there
#   bash benchmarks/gpu_check.sh --quick          # 500 images, ViT-B-16 only: a smoke run of the script
#
# Python: .venv/bin/python when there is one, else $PYTHON, else python3. Figures also go, as JSON, to
# $OUT (when set) or runs/benchmarks/gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 duckdb==2.0.1)
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python

if [ "${1:-}" = "--fetch-wheels" ]; then
  # CPython 3.12 x86-64 wheels (the usual CUDA PyTorch images); pure-Python ones are platform-independent.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  ls -la .whl
  exit 0
fi

IMAGES=5000
MODELS=(ViT-B-16 ViT-L-14)
if [ "${1:-}" = "--quick" ]; then IMAGES=500; MODELS=(ViT-B-16); fi

export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import open_clip, duckdb, ftfy" 2>/dev/null; then
  [ -d .whl ] || { echo "open_clip/duckdb/ftfy missing and no .whl/ folder: run $0 --fetch-wheels first"; exit 2; }
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: no install needed

FIGURES=${OUT:-runs/benchmarks}/gpu_check
mkdir -p "$FIGURES"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'open_clip', open_clip.__version__, \
'cores', len(__import__('os').sched_getaffinity(0)))"

echo "== tests marked gpu"
"$PY" -m pytest -m gpu -q -rs -s -p no:cacheprovider tests/gpu 2>&1 | tee "$FIGURES/tests.log" \
  || echo "!! some gpu tests failed (above); the benchmarks follow"

for model in "${MODELS[@]}"; do
  for precision in fp32 bf16; do
    echo "== $model $precision"
    "$PY" benchmarks/decompose_overhead.py --device cuda --precision "$precision" --model "$model" --batch 256 \
      --images "$IMAGES" --image-size 224 --rounds 3 --command-rounds 1 --skip-memory \
      --json "$FIGURES/$model-$precision.json"
  done
done
echo "== figures in $FIGURES"
