#!/usr/bin/env bash
# device call 4: where the 8K prefill's host time goes
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
timeout 240 python3 .scratch/s11/host_prefill.py 2>&1 | grep -v Warn | tee $OUT/host_prefill.txt
