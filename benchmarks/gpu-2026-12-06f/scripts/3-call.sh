#!/usr/bin/env bash
# device call 3: fused mean-of-norms backward, float32 residual in the product, conv tile default; tests, training, attribution
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 150 python3 -m pytest -q $X -m gpu tests/ops/test_norm*.py tests/ops/test_linear.py tests/ops/test_conv.py tests/ops/test_model_gpu.py tests/train tests/model -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/tests.txt; grep -E "^(FAILED|ERROR)|Error" $OUT/tests.txt | head
date -u +%FT%TZ
timeout 60 python3 benchmarks/throughput.py --parts train --json $OUT/train_b1.json 2>&1 | grep -v Warning > $OUT/train_b1.txt; grep "^training\|ceilings" $OUT/train_b1.txt
timeout 70 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
timeout 60 python3 .scratch/attr.py none > $OUT/attr.txt 2>&1; grep -v Warn $OUT/attr.txt | head -30
date -u +%FT%TZ
