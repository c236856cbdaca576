#!/usr/bin/env bash
# device call 2 (21411b1 + docs): scan/linear/model/flex/graph GPU tests; FlexAttention
# output-gradient copy experiment; graphed training b=2, b=1; decode table
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; git log -1 --format=%h; } | tee $OUT/gpu.txt
timeout 170 python3 -m pytest -q -n 8 -m gpu tests/ops/test_scan_triton.py tests/ops/test_linear.py tests/ops/test_model_gpu.py tests/ops/test_flex_gpu.py tests/train/test_graph_gpu.py 2>&1 | tail -4 | tee $OUT/tests_gpu.txt
timeout 70 python3 .scratch/flex_tangent.py 2>&1 | grep -v Warn | tee $OUT/flex_tangent.txt
timeout 70 python3 .scratch/quick_train.py 2 2>&1 | grep -v Warn | tail -2 | tee $OUT/train_b2.txt
timeout 60 python3 .scratch/quick_train.py 1 2>&1 | grep -v Warn | tail -2 | tee $OUT/train_b1.txt
date -u +%FT%TZ
timeout 130 python3 benchmarks/throughput.py --parts decode --json $OUT/throughput.json 2>&1 | grep -v Warn > $OUT/throughput.txt; grep -v "^{\|^[a-z_0-9]*: {" $OUT/throughput.txt | tail -20
date -u +%FT%TZ
