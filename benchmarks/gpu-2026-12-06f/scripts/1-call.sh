#!/usr/bin/env bash
# device call 1: GPU suite on last session's untimed changes, graph-timed conv sweep, training b=1/b=2, attribution
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 200 python3 -m pytest -q $X -m gpu tests -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -3 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head
timeout 30 python3 .scratch/conv_ncu.py 2>&1 | grep -v Warn | tee $OUT/conv_times.txt
timeout 60 python3 benchmarks/conv_gpu.py --bwd-sweep --json $OUT/conv_sweep.json 2>&1 | grep -v Warn | tee $OUT/conv_sweep.txt | tail -25
date -u +%FT%TZ
timeout 60 python3 benchmarks/throughput.py --parts train --json $OUT/train_b1.json 2>&1 | grep -v Warning > $OUT/train_b1.txt; grep "^training\|ceilings" $OUT/train_b1.txt
timeout 70 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
timeout 60 python3 .scratch/attr.py none > $OUT/attr.txt 2>&1; head -45 $OUT/attr.txt
date -u +%FT%TZ
