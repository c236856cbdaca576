#!/usr/bin/env bash
# device call 6: segmented conv backward (times, sweep, tests); training b=1 and b=2
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 30 python3 .scratch/conv_ncu.py 2>&1 | grep -v Warn | tee $OUT/conv_times.txt
timeout 40 python3 benchmarks/conv_gpu.py --bwd-sweep --json $OUT/conv_sweep.json 2>&1 | grep -v Warn | tee $OUT/conv_sweep.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 100 python3 -m pytest -q $X -m gpu tests/ops/test_conv.py tests/ops/test_model_gpu.py tests/train/test_graph_gpu.py tests/model -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/tests.txt
date -u +%FT%TZ
timeout 60 python3 benchmarks/throughput.py --parts train --json $OUT/train_b1.json 2>&1 | grep -v Warning > $OUT/train_b1.txt; grep "^training\|ceilings" $OUT/train_b1.txt
timeout 70 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
date -u +%FT%TZ
