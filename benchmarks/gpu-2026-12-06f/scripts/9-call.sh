#!/usr/bin/env bash
# device call 9: training with the scan backward capped at 168 registers, 3,168 programs
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 100 python3 .scratch/quick_train.py 2>&1 | grep -v Warn | tee $OUT/train.txt
date -u +%FT%TZ
