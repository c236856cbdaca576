#!/usr/bin/env bash
# device call 1 (59c2725 + linear_gpu --gemv-sweep): whole GPU suite; scan segments by batch;
# graphed training b=1, b=2; GEMV knob sweep at one row
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; git log -1 --format=%h; } | tee $OUT/gpu.txt
timeout 240 python3 -m pytest -q -n 8 -m gpu tests 2>&1 | tail -15 | tee $OUT/tests_gpu.txt
date -u +%FT%TZ
timeout 120 python3 .scratch/seg_sweep.py 1:3168 1:4600 1:6200 2:1200 2:3168 2:4400 2:6000 2:7600 2>&1 | grep -v Warn | tee $OUT/seg_sweep.txt
timeout 70 python3 .scratch/quick_train.py 1 2>&1 | grep -v Warn | tail -2 | tee $OUT/train_b1.txt
timeout 80 python3 .scratch/quick_train.py 2 2>&1 | grep -v Warn | tail -2 | tee $OUT/train_b2.txt
date -u +%FT%TZ
timeout 200 python3 benchmarks/linear_gpu.py --rows 1 --gemv-sweep --only out_proj down_proj dt_proj --json $OUT/gemv_sweep.json 2>&1 | tee $OUT/gemv_sweep.txt
date -u +%FT%TZ
