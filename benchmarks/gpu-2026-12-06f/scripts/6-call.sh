#!/usr/bin/env bash
# device call 6: final state (residual fusion and fused mean-of-norms backward reverted): the autocast test, training b=1/b=2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 60 python3 -m pytest -q -m gpu tests/model/test_forward.py tests/ops/test_linear.py -p no:cacheprovider 2>&1 | tail -2
timeout 60 python3 benchmarks/throughput.py --parts train --json $OUT/train_b1.json 2>&1 | grep -v Warning > $OUT/train_b1.txt; grep "^training\|ceilings" $OUT/train_b1.txt
timeout 70 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
date -u +%FT%TZ
