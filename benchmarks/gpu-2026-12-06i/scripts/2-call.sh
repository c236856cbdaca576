#!/usr/bin/env bash
# device call (session 8): the full throughput table
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; git log --oneline | head -1; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 420 python3 benchmarks/throughput.py --json $OUT/throughput.json 2>&1 | grep -v Warn > $OUT/throughput.txt; grep -v "^{\|^[a-z_0-9]*: {" $OUT/throughput.txt | tail -40
date -u +%FT%TZ
