#!/usr/bin/env bash
# device call 4: scan chunk sweep (stream-timed); the best setting through the scan tests and the training table
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 120 python3 .scratch/chunk_sweep.py 2>&1 | grep -v Warn | tee $OUT/chunk_sweep.txt
date -u +%FT%TZ
if [ -f /tmp/best_scan.txt ] && [ "$(cat /tmp/best_scan.txt)" != "8 1 2048 16" ]; then
  timeout 100 python3 .scratch/with_best.py pytest -q -x tests/ops/test_scan_triton.py -p no:cacheprovider 2>&1 | tail -2 | tee $OUT/tests_scan_best.txt
  timeout 100 python3 .scratch/with_best.py benchmarks/throughput.py --parts train 2>&1 | grep -v Warning | tail -6 | tee $OUT/train_best.txt
fi
date -u +%FT%TZ
