#!/usr/bin/env bash
# device call 2: tests of the changed parts; conv backward sweep; training with the best tile
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 60 python3 benchmarks/conv_gpu.py --bwd-sweep --json $OUT/conv_sweep.json 2>&1 | grep -v Warn | tee $OUT/conv_sweep.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 200 python3 .scratch/conv_best.py $OUT/conv_sweep.json pytest -q $X -m gpu tests/ops/test_norm.py tests/ops/test_conv.py tests/train tests/model tests/ops/test_model_gpu.py tests/ops/test_scan_triton.py -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -4 $OUT/tests.txt
date -u +%FT%TZ
timeout 40 python3 benchmarks/conv_gpu.py 2>&1 | grep -v Warn | tee $OUT/conv.txt
timeout 150 python3 .scratch/conv_best.py $OUT/conv_sweep.json benchmarks/throughput.py --parts train --json $OUT/tp.json 2>&1 | grep -v Warning | tee $OUT/tp.txt | tail -8
date -u +%FT%TZ
timeout 100 python3 .scratch/conv_best.py $OUT/conv_sweep.json .scratch/attr.py none 2>&1 | grep -v Warn | tee $OUT/attr.txt | head -45
date -u +%FT%TZ
