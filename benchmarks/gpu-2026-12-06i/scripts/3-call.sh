#!/usr/bin/env bash
# device call (session 8, 3): the fixed FlexAttention test; throughput.py training at b=2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 120 python3 -m pytest -v -p no:cacheprovider tests/ops/test_flex_gpu.py 2>&1 | tail -15 | tee $OUT/tests_flex.txt
timeout 300 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/throughput_train_b2.json 2>&1 | grep -v Warn > $OUT/throughput_train_b2.txt; grep -v "^{\|^[a-z_0-9]*: {" $OUT/throughput_train_b2.txt | tail -12
date -u +%FT%TZ
