#!/usr/bin/env bash
# device call 5: conv kernel times; full GPU suite; full throughput table; training at b=2
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 30 python3 .scratch/conv_ncu.py 2>&1 | grep -v Warn | tee $OUT/conv_times.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 200 python3 -m pytest -q $X -m gpu tests -p no:cacheprovider > $OUT/tests_gpu.txt 2>&1; echo "tests rc=$?"; tail -3 $OUT/tests_gpu.txt
date -u +%FT%TZ
timeout 240 python3 benchmarks/throughput.py --json $OUT/throughput.json --profile-dir $OUT/prof 2>&1 | grep -v Warning > $OUT/throughput.txt; echo "tp rc=$?"; grep -v "^{\|^[a-z_0-9]*: {" $OUT/throughput.txt | tail -30
date -u +%FT%TZ
timeout 120 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
date -u +%FT%TZ
