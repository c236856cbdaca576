#!/usr/bin/env bash
# device call 7: the scan backward's pass 2 capped at 168 / 152 registers (12 / 13 warps an SM), with program counts
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
for rp in 0:2048 168:2048 168:1584 168:3168 152:2048 0:2048; do MAXNREG=${rp%%:*} PROGRAMS=${rp##*:} timeout 35 python3 .scratch/scatter_time.py 2>&1 | grep -v Warn; done | tee $OUT/maxnreg.txt
date -u +%FT%TZ
