#!/usr/bin/env bash
# device call 4: what moves the autocast-closeness test (scatter / residual in product / noise)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
timeout 200 python3 .scratch/autocast_diag.py 2>&1 | grep -v Warn | tee $OUT/diag.txt
date -u +%FT%TZ
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 200 python3 -m pytest -q $X -m gpu tests -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head
timeout 60 python3 benchmarks/throughput.py --parts train --json $OUT/train_b1.json 2>&1 | grep -v Warning > $OUT/train_b1.txt; grep "^training\|ceilings" $OUT/train_b1.txt
timeout 70 python3 benchmarks/throughput.py --parts train --train-batch 2 --json $OUT/train_b2.json 2>&1 | grep -v Warning > $OUT/train_b2.txt; grep "^training\|ceilings" $OUT/train_b2.txt
date -u +%FT%TZ
