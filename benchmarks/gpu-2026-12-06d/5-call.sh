#!/usr/bin/env bash
# device call 5: scan/model GPU tests at CHUNK=4; chunk 2 and unroll check; prefill + training table
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 120 python3 -m pytest -q $X tests/ops/test_scan_triton.py tests/ops/test_model_gpu.py -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/tests.txt
date -u +%FT%TZ
timeout 60 python3 .scratch/chunk2.py 2>&1 | grep -v Warn | tee $OUT/chunk2.txt
date -u +%FT%TZ
timeout 120 python3 benchmarks/throughput.py --parts prefill train --json $OUT/tp.json 2>&1 | grep -v Warning | tee $OUT/tp.txt | tail -8
date -u +%FT%TZ
