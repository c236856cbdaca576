#!/usr/bin/env bash
# device call 3: scan chunk sweep; full GPU suite; training at b=2
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 150 python3 .scratch/chunk_sweep.py 2>&1 | grep -v Warn | tee $OUT/chunk_sweep.txt
date -u +%FT%TZ
timeout 60 python3 -m pytest -q tests/ops/test_flex_gpu.py -k "share_one or exact_shape" -p no:cacheprovider 2>&1 | tail -2
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 280 python3 -m pytest -q $X -m gpu tests -p no:cacheprovider > $OUT/tests_gpu.txt 2>&1; echo "tests rc=$?"; tail -4 $OUT/tests_gpu.txt
date -u +%FT%TZ
timeout 90 python3 benchmarks/throughput.py --parts train --train-batch 2 2>&1 | grep -v Warning | tail -6 | tee $OUT/train_b2.txt
date -u +%FT%TZ
