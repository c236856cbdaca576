#!/usr/bin/env bash
# device call 2: dB/dC shuffle reduction (tests, timing), conv backward launch sweep, training b=1/b=2
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 150 python3 -m pytest -q $X -m gpu tests/ops/test_scan_triton.py tests/ops/test_conv.py tests/ops/test_model_gpu.py -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head
for s in 0 1 0 1; do SCATTER=$s timeout 40 python3 .scratch/scatter_time.py 2>&1 | grep -v Warn; done | tee $OUT/scatter.txt
timeout 90 python3 benchmarks/conv_gpu.py --bwd-sweep --json $OUT/conv_sweep.json 2>&1 | grep -v Warn | tee $OUT/conv_sweep.txt
date -u +%FT%TZ
timeout 60 python3 benchmarks/throughput.py --parts train --json $OUT/train_b1.json 2>&1 | grep -v Warning > $OUT/train_b1.txt; grep "^training\|ceilings" $OUT/train_b1.txt
timeout 70 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
date -u +%FT%TZ
