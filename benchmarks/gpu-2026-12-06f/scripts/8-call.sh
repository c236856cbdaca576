#!/usr/bin/env bash
# device call 8: is call 7's gain the register cap or the program count?
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
for rp in 0:3168 168:3168 0:4224 168:4224; do MAXNREG=${rp%%:*} PROGRAMS=${rp##*:} timeout 30 python3 .scratch/scatter_time.py 2>&1 | grep -v Warn; done | tee $OUT/maxnreg.txt
date -u +%FT%TZ
