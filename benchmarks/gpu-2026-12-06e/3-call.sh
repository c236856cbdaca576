#!/usr/bin/env bash
# device call 3: two-pass conv backward (sweep, tests); training b=1 and b=2 with the best tile
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 60 python3 benchmarks/conv_gpu.py --bwd-sweep --json $OUT/conv_sweep.json 2>&1 | grep -v Warn | tee $OUT/conv_sweep.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 100 python3 .scratch/conv_best.py $OUT/conv_sweep.json pytest -q $X -m gpu tests/ops/test_conv.py tests/ops/test_model_gpu.py -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/tests.txt
timeout 40 python3 benchmarks/conv_gpu.py 2>&1 | grep -v Warn | tee $OUT/conv.txt
date -u +%FT%TZ
timeout 120 python3 .scratch/conv_best.py $OUT/conv_sweep.json benchmarks/throughput.py --parts train --json $OUT/tp.json 2>&1 | grep -v Warning | tee $OUT/tp.txt | tail -6
date -u +%FT%TZ
timeout 90 python3 .scratch/conv_best.py $OUT/conv_sweep.json .scratch/attr.py none 2>&1 | grep -v Warn | tee $OUT/attr.txt | head -12
date -u +%FT%TZ
timeout 180 python3 .scratch/conv_best.py $OUT/conv_sweep.json benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/tp_b2.json 2>&1 | grep -v Warning | tee $OUT/tp_b2.txt | tail -6
date -u +%FT%TZ
