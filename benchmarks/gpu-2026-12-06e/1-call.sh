#!/usr/bin/env bash
# device call 1 (session 7): full GPU suite; scan launch sweep; kernel attribution of a training step
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%FT%TZ; } | tee $OUT/gpu.txt
X=""; python3 -c "import xdist" 2>/dev/null && X="-n 8"
timeout 260 python3 -m pytest -q $X -m gpu tests -p no:cacheprovider > $OUT/tests_gpu.txt 2>&1; echo "tests rc=$?"; tail -15 $OUT/tests_gpu.txt
date -u +%FT%TZ
timeout 200 python3 benchmarks/scan_gpu.py --launch-sweep --json $OUT/sweep.json 2>&1 | grep -v Warn | tee $OUT/sweep.txt | tail -40
date -u +%FT%TZ
timeout 100 python3 .scratch/attr.py 2>&1 | grep -v Warn | tee $OUT/attr.txt | head -70
date -u +%FT%TZ
