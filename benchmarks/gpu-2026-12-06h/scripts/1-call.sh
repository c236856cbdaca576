#!/usr/bin/env bash
# device call (last of the session's budget): whole GPU suite on the final code; decode table if time is left
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 170 python3 -m pytest -q -n 8 -m gpu tests 2>&1 | tail -15 | tee $OUT/tests_gpu.txt
date -u +%FT%TZ
timeout 100 python3 benchmarks/throughput.py --parts decode --json $OUT/throughput.json 2>&1 | grep -v Warn > $OUT/throughput.txt; grep -v "^{\|^[a-z_0-9]*: {" $OUT/throughput.txt | tail -20
date -u +%FT%TZ
