#!/usr/bin/env bash
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 200 python3 .scratch/autocast_diag.py 2>&1 | grep -v Warn | tee $OUT/diag.txt
date -u +%FT%TZ
