#!/usr/bin/env bash
# session 2026-12-06 (third), device call: full table with profiles, train breakdown, ncu on the scan backward
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src HYMBA_FIXTURES=$PWD/.fixtures
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; date -u +%FT%TZ; python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"; lscpu | grep "Model name"; uname -r; } | tee $OUT/gpu.txt
timeout 400 python3 benchmarks/throughput.py --json $OUT/throughput.json --profile-dir /tmp/prof 2>&1 | tee $OUT/throughput.txt | grep -v Warning | tail -26
tar czf $OUT/prof.tar.gz -C /tmp prof
date -u +%FT%TZ
timeout 60 python3 .scratch/train_breakdown.py 2>&1 | grep -v Warn | tee $OUT/train_breakdown.txt | head -30
date -u +%FT%TZ
timeout 100 ncu --clock-control none --kernel-name regex:_scan_bwd_kernel --launch-skip 4 --launch-count 2 \
  --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SourceCounters \
  python3 .scratch/ncu_scan.py > $OUT/ncu_scan_bwd.txt 2>&1; echo "ncu rc=$?"; grep -E "Stall|Warp Cycles|Issued|Eligible|Occupancy|Registers|Duration|No Eligible|Active Warps" $OUT/ncu_scan_bwd.txt | head -50
date -u +%FT%TZ
timeout 150 python3 benchmarks/flex_gpu.py --length 4224 --backward --json $OUT/flex_4k.json 2>&1 | grep -v Warn | tee $OUT/flex_4k.txt | tail -14
date -u +%FT%TZ
