#!/usr/bin/env bash
# device call (session 8): whole GPU suite keeping names; graphed training b=2; FlexAttention old/new
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; git log --oneline | head -1; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 320 python3 -m pytest -v -rfE --durations=15 --junitxml=$OUT/junit.xml -n 8 -m gpu tests > $OUT/tests.log 2>&1
echo "suite rc=$?"
grep -E "FAILED|ERROR|passed|failed" $OUT/tests.log | grep -v "PASSED" | tail -20
date -u +%FT%TZ
timeout 70 python3 .scratch/quick_train.py 2 2>&1 | grep -v Warn | tail -2 | tee $OUT/train_b2.txt
timeout 60 python3 .scratch/s10/flex_time.py 1 2>&1 | grep -v Warn | tee $OUT/flex_time.txt
date -u +%FT%TZ
