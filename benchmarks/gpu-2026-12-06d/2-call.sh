#!/usr/bin/env bash
# device call 2: host profile of the prefill; flex exact-shape training kernels; GPU flex tests
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 90 python3 .scratch/host_prefill.py > $OUT/host_prefill.txt 2>&1; head -4 $OUT/host_prefill.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 4"
timeout 150 python3 -m pytest -q $X tests/ops/test_flex_gpu.py tests/ops/test_flex_mask.py -p no:cacheprovider > $OUT/tests_flex.txt 2>&1; echo "tests rc=$?"; tail -3 $OUT/tests_flex.txt
date -u +%FT%TZ
timeout 200 python3 benchmarks/throughput.py --parts prefill train --json $OUT/tp.json --profile-dir /tmp/prof 2>&1 | tee $OUT/tp.txt | grep -v Warning | tail -9
cp /tmp/prof/hymba_train_no_checkpointing.txt $OUT/ 2>/dev/null
date -u +%FT%TZ
